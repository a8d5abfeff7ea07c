"""A job that failed for want of memory, named as such: torch's CUDA out-of-memory error, or the host's
allocator refusing a tensor, found anywhere in the chain of the error that ended it (the trainer wraps
some, e.g. a checkpoint's or a generation's, in typed errors of its own)."""

from __future__ import annotations

# What torch says: its CUDA allocator (torch.OutOfMemoryError, also what a rank of a multi-GPU run wrote
# to its stderr, which its failure quotes), and its CPU allocator when the host cannot give it a tensor (a
# plain RuntimeError).
_CUDA = "CUDA out of memory"
_HOST = "DefaultCPUAllocator: can't allocate memory"


def out_of_memory(error: BaseException) -> str | None:
    """The cause in words ("out of GPU memory: <torch's message>", or "out of host memory: ...") if
    `error`, or one that caused it, is an allocation failure; None otherwise."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        if _CUDA in text or type(current).__name__ == "OutOfMemoryError":
            return f"out of GPU memory: {text}"
        if _HOST in text:
            return f"out of host memory: {text}"
        current = current.__cause__ or current.__context__
    return None
