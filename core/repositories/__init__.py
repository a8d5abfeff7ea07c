"""Every query lives here. Repositories flush but never commit: the caller's boundary owns the transaction."""
