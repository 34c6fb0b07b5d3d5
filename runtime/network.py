"""Container networking: one bridge per state root, one veth pair and one address per container.

(interface only -- the implementation is being written; see the helper's notes)
"""
