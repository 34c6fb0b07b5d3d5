"""Live and cold migration of a container to another host.

``driver`` picks the mode and runs it; ``sequence`` owns the source side's phases, the records,
the rollback and the point of no return, and a mode (``cold``, ``postcopy``; ``precopy`` is the
cold mode with pre-dump rounds) supplies only what differs. ``phases`` holds what they share,
``target`` is the receiving side, ``recovery`` the records that keep exactly one copy through
crashes, ``upper_sync`` the upper layer's pre-sync. No names are re-exported here: importing
one room must not pull in the others.
"""
