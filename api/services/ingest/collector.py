"""Collects the problems and the valid pairs of one upload, whatever its format."""

from __future__ import annotations

from typing import NoReturn

from api.services.ingest.limits import MAX_PROMPT_CHARS, IngestLimits
from api.services.ingest.report import IngestRejected, IngestReport, PreviewPair, Problem, SourceFormat
from trainer.dataset_format import DatasetWriter, EncodedImage

PREVIEW_PAIRS = 5
NOT_TEXT = (
    "holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape, or bytes that are not UTF-8), "
    "which is not text"
)


def is_text(value: object) -> bool:
    """Whether every string in `value` (a JSON value: keys and items too) can be stored and shown, that is
    encoded as UTF-8: JSON's \\ud800 escape without its pair decodes to a str that cannot."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(is_text(key) and is_text(item) for key, item in value.items())
    if isinstance(value, list):
        return all(is_text(item) for item in value)
    return True


class StopIngest(Exception):
    """Raised after a fatal problem is recorded: nothing more of the upload can be read safely."""


class PairCollector:
    """Records every problem and writes valid pairs until the first problem (after that, only checks).

    A rejected upload is still read to its end, so that its answer lists every problem at once.
    """

    def __init__(self, writer: DatasetWriter, limits: IngestLimits) -> None:
        self.limits = limits
        self.kind = writer.kind
        self._writer = writer
        self.problems: list[Problem] = []
        self._unlisted = 0
        self._rows = 0
        self.valid_pairs = 0
        self.dropped_ties = 0
        # Set by the layouts that read captions: how many rows had none (None: captions do not apply).
        self.captions_missing: int | None = None
        self.preview: list[PreviewPair] = []

    def quiet_twin(self) -> PairCollector:
        """A collector of the same kind and limits whose problems are thrown away, for a first look at
        the rows (which archive members they reference) before the pass that reports them."""
        return PairCollector(self._writer, self.limits)

    def report(self, row: int | None, field: str | None, reason: str) -> None:
        """Record one problem; beyond `max_problems` they are only counted."""
        if len(self.problems) < self.limits.max_problems:
            self.problems.append(Problem(row=row, field=field, reason=reason))
        else:
            self._unlisted += 1

    def fatal(self, reason: str, *, row: int | None = None) -> NoReturn:
        """Record a problem that makes reading on unsafe or pointless, and stop."""
        self.report(row, None, reason)
        raise StopIngest(reason)

    def admit_row(self, row: int) -> None:
        """Count a non-tie row; stops the ingest once there are more than `max_pairs`."""
        self._rows += 1
        if self._rows > self.limits.max_pairs:
            self.fatal(f"more than {self.limits.max_pairs} pairs; split the dataset", row=row)

    def drop_tie(self) -> None:
        """Count a pair whose labels express no preference."""
        self.dropped_ties += 1

    def check_text(self, row: int, record: dict[str, object]) -> bool:
        """Whether every field of a JSON row is text (`is_text`); reports each one that is not."""
        bad = [field for field, value in record.items() if not (is_text(field) and is_text(value))]
        for field in bad:
            self.report(row, field.encode("utf-8", "backslashreplace").decode("utf-8"), NOT_TEXT)
        return not bad

    def check_prompt(self, row: int, field: str, value: object) -> str | None:
        """The prompt if it is usable, else None after recording why not."""
        if value is None:
            self.report(row, field, "missing value")
        elif not isinstance(value, str):
            self.report(row, field, f"must be a string, not {type(value).__name__}")
        elif not is_text(value):
            self.report(row, field, NOT_TEXT)
        elif not value.strip():
            self.report(row, field, "prompt is empty")
        elif len(value) > MAX_PROMPT_CHARS:
            self.report(row, field, f"prompt is {len(value)} characters, over {MAX_PROMPT_CHARS}")
        else:
            return value
        return None

    def add_pair(
        self, prompt: str, *, chosen: EncodedImage, rejected: EncodedImage, mask: EncodedImage | None = None
    ) -> None:
        """Keep a fully checked pair; it is written only while the upload is still without problems."""
        if self._keep(prompt, masked=mask is not None):
            self._writer.add_pair(prompt, chosen=chosen, rejected=rejected, mask=mask)

    def add_target(
        self,
        prompt: str,
        *,
        image: EncodedImage,
        generation_prompt: str | None,
        mask: EncodedImage | None = None,
    ) -> None:
        """Keep a fully checked row of a targets or avoid upload, written like `add_pair`'s pairs."""
        if self._keep(prompt, masked=mask is not None):
            self._writer.add_target(prompt, image=image, generation_prompt=generation_prompt, mask=mask)

    def _keep(self, prompt: str, *, masked: bool) -> bool:
        """Count a valid row (and preview it); whether it is to be written."""
        self.valid_pairs += 1
        if len(self.preview) < PREVIEW_PAIRS:
            self.preview.append(PreviewPair(prompt=prompt, masked=masked))
        return not self.problems

    def finish(self, source_format: SourceFormat) -> IngestReport:
        """The report, or `IngestRejected` with every problem if there is any (or no valid pair)."""
        if self.valid_pairs == 0 and not self.problems:
            # With other problems this would only restate them; alone it is the whole story (say, all ties).
            ties = f" ({self.dropped_ties} ties dropped)" if self.dropped_ties else ""
            self.report(None, None, f"no valid pairs{ties}")
        if self._unlisted:
            self.problems.append(Problem(row=None, field=None, reason=f"{self._unlisted} more problems"))
        if self.problems:
            raise IngestRejected(self.problems)
        return IngestReport(
            kind=self.kind,
            num_pairs=self.valid_pairs,
            dropped_ties=self.dropped_ties,
            preview=self.preview,
            source_format=source_format,
            captions_missing=self.captions_missing,
        )
