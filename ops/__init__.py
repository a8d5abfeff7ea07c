"""The operator's side of mapo-service: the embedded service's supervisor (`mapo serve`), schema
migrations and API-key administration, working on the service's own settings and database.

`client` (the SDK and the `mapo` CLI) speaks REST only and never imports this package, except when
`mapo serve|migrate|keys` runs: the CLI then hands the command over to `ops.cli`."""
