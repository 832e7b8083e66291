"""The application layer (ARCHITECTURE §2): what a user can do, independent of the CLI.

A write validates, appends its input events and waits until the planner service has
planned past them; a read only reads the projections. Nothing here plans: only the
planner service does (``planner.worker.PlannerService``), except a what-if read
(``--now`` ahead of the ledger's clock), which plans in a transaction that is rolled back.
"""
