"""simcli on Ray: encoding, whitening and index building spread over the workers of a Ray cluster.

Modules, one job each:
    runtime  `--ray local|auto|ADDRESS`: start or join a Ray runtime; the one-line error without Ray
    plan     the driver's one reading pass: input rows cut into shards, each located by file offsets
    encode   the driver's probe of the model (before Ray starts), then a Ray Data pipeline of shard plans
             through a pool of encoder actors; the driver lists the shards in the manifest as they land
    whiten   whitening moments of each shard in parallel tasks, merged pairwise
    index    train once, fill copies of the trained index in parallel, merge their inverted lists

Nothing here is imported unless a command is given `--ray`: Ray itself is imported inside functions.
"""
