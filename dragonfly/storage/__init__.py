"""The on-disk piece store: tasks as sparse data files with a versioned meta.json.

One module a job: C{store} (PieceStore: create, find, remove, quota, GC,
load), C{taskfile} (one task: its pieces, reads and the three kinds of
write), C{saver} (when a task's meta.json is written), C{meta} (the pure,
versioned meta.json codec), C{fdbudget} (the bound on open data files),
C{fileio} (the blocking file operations the runner threads do), C{layout}
(names on disk and value checks), C{buffer} (a piece gathered as it
arrives) and C{errors}. Cutting a byte stream into pieces is the ingest
pipeline's job (L{dragonfly.ingest.cutter}). Storage imports neither the
protocol nor a role.
"""
