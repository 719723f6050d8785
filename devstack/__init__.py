"""The development stack: real backend servers and service processes on loopback.

Used by the tests, the benchmarks (``bench/``) and ``scripts/run.sh``, never by the services:

* ``devstack.ports``: free loopback ports, waiting for a port to open;
* ``devstack.servers``: Redis, RabbitMQ, SecantusDB and OpenBao as child processes;
* ``devstack.backends``: the servers of one stack by role (``Backends``), started at once;
* ``devstack.services``: a service as its own process (``python -m services.<name>``);
* ``devstack.vault``: an OpenBao dev server set up the way an operator would for responders.
* ``devstack.localbao``: the persistent OpenBao of ``scripts/run.sh`` (config, init, unseal).

``python -m devstack up`` starts the backends and prints their URLs until Ctrl-C; see
``python -m devstack --help`` for the small commands the scripts use.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository
