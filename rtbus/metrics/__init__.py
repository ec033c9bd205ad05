"""Metrics: per-process snapshots in the deployment's runtime directory, rendered for Prometheus.

Every rtbus process (master, HTTP workers, gevent, cron, single) writes a small
JSON snapshot of its figures to the runtime directory every couple of seconds
(`snapshots`); ``/metrics`` on any process reads them all and renders them in
the Prometheus text format with a ``process`` label (`exposition`). The families
and their meaning are declared once, in `families`; `collect` turns live objects
(pools, the hub, the dispatcher, the master) into figures.
"""
