"""edgeship monitoring: the metric catalogue, histogram buckets, PromQL, rules and dashboards.

Dependency-free: the server, the agent, the alert rules and the dashboards all read these
definitions, so a metric or bucket is defined once.
"""
