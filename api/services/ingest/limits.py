"""Size and count limits applied to every upload, so that no input can exhaust memory, disk or time."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MIB = 1 << 20
GIB = 1 << 30

# Below this many uncompressed bytes a member is never judged by its compression ratio: small files
# (a CSV, a flat synthetic PNG) legitimately compress far better than a bomb's budget would allow.
RATIO_FLOOR_BYTES = 4 * MIB

# A pairs.jsonl line, or a prompt, longer than this is a mistake or an attack, never a caption.
MAX_LINE_BYTES = 256 * 1024
MAX_PROMPT_CHARS = 10_000


class IngestLimits(BaseModel):
    """Limits for one upload. The defaults fit Pick-a-Pic-sized datasets on one machine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_pairs: int = Field(
        default=1_000_000,
        ge=1,
        description="Most preference pairs kept (ties excluded); Pick-a-Pic v2 has about a million rows.",
    )
    max_image_bytes: int = Field(default=20 * MIB, ge=1, description="Largest encoded image file, in bytes.")
    max_image_pixels: int = Field(
        default=4096 * 4096,
        ge=1,
        description="Largest width × height of an image; checked from the header before decoding.",
    )
    max_uncompressed_bytes: int = Field(
        default=50 * GIB,
        ge=1,
        description="Most bytes an archive or parquet file may expand to, declared and actually read.",
    )
    max_compression_ratio: float = Field(
        default=100.0,
        gt=1.0,
        description=(
            "Largest uncompressed/compressed ratio of a zip member, of a whole zip (declared sizes), and of "
            "the running totals of what a zip or .tar.gz has decompressed against what was read, each "
            f"judged above {RATIO_FLOOR_BYTES // MIB} MiB; zip bombs reach 1000 and more, images barely "
            "compress. So no archive expands to more than this many times its size."
        ),
    )
    max_members: int = Field(
        default=500_000,
        ge=1,
        description=(
            "Most entries in an archive (files and folders); datasets over ~250k pairs belong in parquet. "
            "A zip's central directory is parsed before this check, so the API's upload size limit is "
            "what bounds that read."
        ),
    )
    max_problems: int = Field(
        default=1000,
        ge=1,
        description="Most problems listed one by one; the rest are counted in a final summary problem.",
    )
