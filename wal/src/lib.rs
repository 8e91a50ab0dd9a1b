//! tricommit-wal: a segmented, preallocated, mmap'd write-ahead log with group commit.
