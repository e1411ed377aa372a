"""The measurements, one module per kind; each imports only ``benchmarks.harness``
and the modules listed before it here:

* ``wire``: raw-protocol peers and frames (the floor's clients on our relay);
* ``latency``: 1:1 latency (raw floor, floor's clients on ours, SDK) and presence latency;
* ``fanout``: 1 sender to 100 receivers, the same three ways;
* ``memory``: idle clients' memory on both sides, and the reconnect storm;
* ``cluster``: the relay cluster against one relay (``run.py --cluster``);
* ``capacity``: what one Locust worker sustains (``locust_capacity.py``);
* ``churn``: what a connection cycle costs the relay with N idle peers (``churn.py``).
"""
