"""`mapo-ops`: run the embedded service and administer the local one's database, without HTTP.

Works on the settings of the service itself (MAPO_*: MAPO_DATA_DIR, MAPO_DATABASE_URL, ...), not on an
API URL and key. `mapo serve|migrate|keys ...` is this command too (client.cli hands those over).
Exit codes: 0 done, 1 error, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TypeAlias

from rich.console import Console

from client.cli import OPERATOR_COMMANDS as COMMAND_HELP
from client.output import keys_table
from core.settings import Settings
from ops import admin
from ops.serve import serve
from ops.terminal import DEFAULT_LOG_LEVEL, LOG_LEVELS

EXIT_OK, EXIT_ERROR = 0, 1
Handler = Callable[[argparse.Namespace], int]
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def main(argv: list[str] | None = None, *, prog: str = "mapo-ops") -> int:
    """Entry point of the `mapo-ops` console script, of `python -m ops`, and of `mapo serve|migrate|keys`."""
    args = build_parser(prog).parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


def build_parser(prog: str = "mapo-ops") -> argparse.ArgumentParser:
    """The operator's command tree."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    serve_parser = commands.add_parser("serve", help=COMMAND_HELP["serve"])
    serve_parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve_parser.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve_parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=DEFAULT_LOG_LEVEL,
        help="error (default): the service's own lines (ready, key, base models, each job's start and end) "
        "and the API's and worker's errors; warning, info (one line per request) and debug (everything the "
        "children write, Celery's banner too) show more",
    )
    serve_parser.set_defaults(handler=cmd_serve)
    migrate = commands.add_parser("migrate", help=COMMAND_HELP["migrate"])
    migrate.set_defaults(handler=cmd_migrate)
    _add_key_commands(commands)
    return parser


def _add_key_commands(commands: Subparsers) -> None:
    keys = commands.add_parser("keys", help=COMMAND_HELP["keys"]).add_subparsers(
        required=True, metavar="COMMAND"
    )
    create = keys.add_parser("create", help="create an API key (printed as the last word)")
    create.add_argument("--tenant", required=True, help="tenant name, created if new (required)")
    create.add_argument("--label", default="", help="a note stored with the key")
    create.set_defaults(handler=cmd_keys_create)
    listing = keys.add_parser("list", help="list API keys (their public prefixes, never the keys)")
    listing.add_argument("--tenant", help="only this tenant's keys")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(handler=cmd_keys_list)
    revoke = keys.add_parser(
        "revoke", help="revoke an API key (by id or listed prefix); refused within MAPO_AUTH_CACHE_SECONDS"
    )
    revoke.add_argument("key", help="key id (key_…) or prefix (mapo_…) from `mapo keys list`")
    revoke.set_defaults(handler=cmd_keys_revoke)


def _error(message: str) -> None:
    print(f"mapo: {message}", file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the embedded service until SIGTERM/SIGINT."""
    return serve(host=args.host, port=args.port, log_level=args.log_level)


def cmd_migrate(args: argparse.Namespace) -> int:
    """Upgrade the schema of the configured database."""
    from sqlalchemy.engine import make_url

    settings = Settings()
    admin.migrate(settings)
    print(f"{make_url(settings.sqlalchemy_url).render_as_string(hide_password=True)} is up to date")
    return EXIT_OK


def cmd_keys_create(args: argparse.Namespace) -> int:
    """Create a key; it is the last word printed, so scripts can take it with `| awk '{print $NF}'`."""
    settings = Settings()
    admin.migrate(settings, quiet=True)  # so that this works on a fresh data dir, before `mapo serve`
    key = admin.create_key(settings, args.tenant, label=args.label)
    print(f"API key for tenant {args.tenant!r} (shown only once, keep it safe): {key}")
    return EXIT_OK


def cmd_keys_list(args: argparse.Namespace) -> int:
    """List keys by prefix, tenant, label and dates."""
    settings = Settings()
    admin.migrate(settings, quiet=True)
    keys = admin.list_keys(settings, tenant_name=args.tenant)
    if args.json:
        print(json.dumps([key._asdict() for key in keys], indent=2))
    else:
        Console().print(keys_table([key._asdict() for key in keys]))
    return EXIT_OK


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """Revoke a key; requests with it answer 401 from then on."""
    key = admin.revoke_key(Settings(), args.key)
    if key is None:
        _error(f"no API key with id or prefix {args.key!r} (see `mapo keys list`)")
        return EXIT_ERROR
    print(f"revoked {key.id} ({key.prefix}…) of tenant {key.tenant!r}")
    return EXIT_OK
