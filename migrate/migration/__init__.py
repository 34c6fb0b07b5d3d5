"""Live and cold migration of a container to another host.

``driver`` runs the source side's phases (cold migration, and the frame the live modes plug
into), ``postcopy`` and ``precopy`` the live modes, ``target`` the receiving side, ``recovery``
the records that keep exactly one copy through crashes, ``upper_sync`` the upper layer's
pre-sync. No names are re-exported here: importing one room must not pull in the others.
"""
