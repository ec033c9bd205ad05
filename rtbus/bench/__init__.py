"""rtbus-bench: a staged load drill for a running rtbus (or Odoo) bus server.

Modules, each with one job:

- `options`: the command line, validated into a frozen `BenchOptions`;
- `wire`: sans-I/O client-side bytes (handshake, subscribe frame, HTTP/1.1, id scanning);
- `accounting`: what each client received (lost, duplicated) and latency histograms;
- `clients`: websocket and long-polling clients on gevent sockets;
- `publishers`: the sql, python, http and nchan publishing paths;
- `probe`: the server's memory and CPU, this process's CPU, pg_stat_statements;
- `drill`: the stages (ramp, hold, spike, storm) and the progress line;
- `report`: the text and JSON reports;
- `compare`: ``--compare``: the second server's options, the run order, the joint table;
- `nchan`: an nginx with the Nchan module shaped for ``--compare nchan:URL``;
- `cli`: the console script.
"""
