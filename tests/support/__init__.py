"""Helpers shared by every test directory, each written once.

- ``ports``: a free TCP port on the loopback.
- ``waits``: poll a condition until a deadline, failing with what was awaited.
- ``brokers``: a started embedded broker (streamgmm.embedded.EmbeddedBroker).
- ``processes``: the real ``streamgmm run`` process and its config file.
- ``events``: generated event streams with injected anomalies.
- ``promtool``: Prometheus's checker, or a skip naming how to install it.
- ``faults``: the reliability tests' numbered streams, checkpoints and offsets.

Imported as ``tests.support.X`` (pyproject puts the repository root on sys.path).
"""
