#!/usr/bin/env python3
"""Writes docs/grafana/floodwall.json, the Grafana dashboard of every floodwall
metric. Edit the panels here and run it; examples/tests/dashboard.rs checks
the result against a real gateway run."""
import json, os

R = '[$__rate_interval]'
N = 'name=~"$name"'

def rate(metric, by, extra=''):
    sel = f'{N}, {extra}' if extra else N
    if metric.startswith('{'):
        return f'sum by ({by}) (rate({{{metric[1:-1]}, {sel}}}{R}))'
    return f'sum by ({by}) (rate({metric}{{{sel}}}{R}))'

def gauge(metric, by='name', agg='max'):
    if metric.startswith('{'):
        return f'{agg} by ({by}) ({{{metric[1:-1]}, {N}}})'
    return f'{agg} by ({by}) ({metric}{{{N}}})'

def quantile(q, family, by='name'):
    return (f'histogram_quantile({q}, sum by (le, {by}) '
            f'(rate({family}_bucket{{{N}}}{R})))')

def mean(family, by='name'):
    return (f'sum by ({by}) (rate({family}_sum{{{N}}}{R})) / '
            f'sum by ({by}) (rate({family}_count{{{N}}}{R}))')

ANY = lambda suffix: '{__name__=~"floodwall_.+_' + suffix + '"}'

rows = [
    ('Every layer (one vocabulary: floodwall_<layer>_requests_total)', [
        ('Admitted per second, by layer', 'reqps',
         [(rate(ANY('requests_total'), '__name__, name', 'outcome="admitted"'), '{{__name__}} {{name}}')]),
        ('Rejected per second, by layer and reason', 'reqps',
         [(rate(ANY('requests_total'), '__name__, name, reason', 'outcome="rejected"'), '{{__name__}} {{name}} {{reason}}')]),
        ('Rejected share, by layer', 'percentunit',
         [(rate(ANY('requests_total'), '__name__, name', 'outcome="rejected"') + ' / ' +
           rate(ANY('requests_total'), '__name__, name'), '{{__name__}} {{name}}')]),
        ('Requests that waited for a token (wait mode), by limiter', 'reqps',
         [(rate(ANY('waited_total'), '__name__, name'), '{{__name__}} {{name}}')]),
        ('Configured limit (requests per second; rate limiters and adaptive concurrency)', 'short',
         [(gauge(ANY('limit'), '__name__, name'), '{{__name__}} {{name}}')]),
        ('Live reconfigurations', 'short',
         [(f'sum by (__name__, name) (increase({{__name__=~"floodwall_.+_reconfigurations_total", {N}}}{R}))', '{{__name__}} {{name}}')]),
        ('Keys held by keyed limiters', 'short',
         [(gauge(ANY('keys'), '__name__, name', 'sum'), '{{__name__}} {{name}}')]),
        ('Keys evicted per second, by reason', 'ops',
         [(rate(ANY('evicted_total'), '__name__, name, reason'), '{{__name__}} {{name}} {{reason}}')]),
    ]),
    ('Circuit breakers', [
        ('Breaker state (0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled)', 'short',
         [(gauge('floodwall_breaker_state'), '{{name}}')]),
        ('Calls by outcome', 'ops',
         [(rate('floodwall_breaker_calls_total', 'name, outcome'), '{{name}} {{outcome}}')]),
        ('State transitions', 'ops',
         [(rate('floodwall_breaker_transitions_total', 'name, from, to'), '{{name}} {{from}} -> {{to}}')]),
    ]),
    ('Queues: CoDel and bulkhead', [
        ('Queue length', 'short',
         [(gauge(ANY('queue_length'), '__name__, name'), '{{__name__}} {{name}}')]),
        ('LIFO mode (1 = serving newest first)', 'short',
         [(gauge(ANY('lifo'), '__name__, name'), '{{__name__}} {{name}}')]),
        ('Dropped per second, by reason', 'ops',
         [(rate('floodwall_codel_dropped_total', 'name, reason'), 'codel {{name}} {{reason}}'),
          (rate('floodwall_bulkhead_dropped_total', 'name, reason'), 'bulkhead {{name}} {{reason}}')]),
        ('CoDel sojourn time', 's',
         [(quantile(0.5, 'floodwall_codel_sojourn_seconds'), 'p50 {{name}}'),
          (quantile(0.99, 'floodwall_codel_sojourn_seconds'), 'p99 {{name}}'),
          (mean('floodwall_codel_sojourn_seconds'), 'mean {{name}}')]),
        ('Bulkhead sojourn time', 's',
         [(quantile(0.99, 'floodwall_bulkhead_sojourn_seconds'), 'p99 {{name}}'),
          (mean('floodwall_bulkhead_sojourn_seconds'), 'mean {{name}}')]),
    ]),
    ('Tail latency and degradation: hedging, coalescing, fallback, breakers per key', [
        ('Hedges sent and not sent (by reason)', 'ops',
         [(rate('floodwall_hedge_attempts_total', 'name'), 'sent {{name}}'),
          (rate('floodwall_hedge_skipped_total', 'name, reason'), 'skipped {{name}} {{reason}}')]),
        ('Coalesced calls by role (leader: made; follower: shared; bypass: not coalesced)', 'ops',
         [(rate('floodwall_coalesce_calls_total', 'name, role'), '{{name}} {{role}}')]),
        ('Fallback answers by trigger and result (failed: the fallback failed too)', 'ops',
         [(rate('floodwall_fallback_answers_total', 'name, trigger, result'), '{{name}} {{trigger}} {{result}}')]),
        ('Breakers per key: keys not closed', 'short',
         [(gauge('floodwall_breaker_group_open'), '{{name}}')]),
        ('Breakers per key: calls by outcome and transitions', 'ops',
         [(rate('floodwall_breaker_group_calls_total', 'name, outcome'), '{{name}} {{outcome}}'),
          (rate('floodwall_breaker_group_transitions_total', 'name, from, to'), '{{name}} {{from}} -> {{to}}')]),
    ]),
    ('Hot keys: detection, cache, write aggregation', [
        ('Requests marked hot, and changes of the hot set', 'ops',
         [(rate('floodwall_hotkey_marked_total', 'name'), 'hot {{name}}'),
          (rate('floodwall_hotkey_changes_total', 'name'), 'changes {{name}}')]),
        ('Hot cache lookups by result (hit: a backend call saved)', 'ops',
         [(rate('floodwall_hot_cache_lookups_total', 'name, result'), '{{name}} {{result}}')]),
        ('Aggregated writes by result, and updates merged into them', 'ops',
         [(rate('floodwall_aggregate_writes_total', 'name, result'), 'writes {{name}} {{result}}'),
          (rate('floodwall_aggregate_merged_total', 'name'), 'merged {{name}}')]),
    ]),
    ('Deadlines', [
        ('Deadlines exceeded, by phase', 'ops',
         [(rate('floodwall_deadline_exceeded_total', 'name, phase'), '{{name}} {{phase}}')]),
        ('Inbound budget', 's',
         [(quantile(0.5, 'floodwall_deadline_inbound_seconds'), 'p50 {{name}}'),
          (quantile(0.01, 'floodwall_deadline_inbound_seconds'), 'p1 {{name}}'),
          (mean('floodwall_deadline_inbound_seconds'), 'mean {{name}}')]),
    ]),
    ('Priority admission (DAGOR)', [
        ('Admission level (compound priority admitted)', 'short',
         [(gauge('floodwall_priority_level'), '{{name}}')]),
        ('Queuing time the level is set from', 's',
         [(gauge('floodwall_priority_queuing_seconds'), '{{name}}')]),
        ('Requests by priority and outcome', 'reqps',
         [(rate('floodwall_priority_requests_total', 'name, priority, outcome'), '{{name}} {{priority}} {{outcome}}')]),
        ('Dropped locally (client side, below the level a server sent)', 'ops',
         [(rate('floodwall_priority_local_dropped_total', 'name'), '{{name}}')]),
    ]),
    ('Adaptive throttling (SRE)', [
        ('Client-side rejection probability, by criticality', 'percentunit',
         [(gauge('floodwall_throttle_probability', 'name, criticality'), '{{name}} {{criticality}}')]),
        ('Requests by criticality and outcome', 'reqps',
         [(rate('floodwall_throttle_requests_total', 'name, criticality, outcome'), '{{name}} {{criticality}} {{outcome}}')]),
    ]),
    ('Adaptive concurrency', [
        ('Limit and in flight', 'short',
         [(gauge('floodwall_concurrency_limit'), 'limit {{name}}'),
          (gauge('floodwall_concurrency_in_flight'), 'in flight {{name}}')]),
        ('Round-trip time estimates', 's',
         [(gauge('floodwall_concurrency_rtt_seconds', 'name, estimate'), '{{name}} {{estimate}}')]),
        ('Calls by outcome', 'ops',
         [(rate('floodwall_concurrency_calls_total', 'name, outcome'), '{{name}} {{outcome}}')]),
    ]),
    ('Distributed limiter on Redis', [
        ('Decisions by source and outcome', 'reqps',
         [(rate('floodwall_redis_requests_total', 'name, source, outcome'), '{{name}} {{source}} {{outcome}}')]),
        ('Deciding locally (1 = Redis away)', 'short',
         [(gauge('floodwall_redis_fallback'), '{{name}}')]),
        ('Redis errors by class', 'ops',
         [(rate('floodwall_redis_errors_total', 'name, reason'), '{{name}} {{reason}}')]),
        ('Round trips per second', 'ops',
         [(rate('floodwall_redis_round_trips_total', 'name'), '{{name}}')]),
        ('Round-trip time', 's',
         [(quantile(0.99, 'floodwall_redis_round_trip_seconds'), 'p99 {{name}}'),
          (mean('floodwall_redis_round_trip_seconds'), 'mean {{name}}')]),
    ]),
]

panels, pid, y = [], 1, 0
for title, items in rows:
    panels.append({'id': pid, 'type': 'row', 'title': title, 'collapsed': False,
                   'gridPos': {'h': 1, 'w': 24, 'x': 0, 'y': y}, 'panels': []})
    pid += 1; y += 1
    for i, (ptitle, unit, targets) in enumerate(items):
        panels.append({
            'id': pid, 'type': 'timeseries', 'title': ptitle,
            'datasource': {'type': 'prometheus', 'uid': '${datasource}'},
            'gridPos': {'h': 8, 'w': 8, 'x': (i % 3) * 8, 'y': y + (i // 3) * 8},
            'fieldConfig': {'defaults': {'unit': unit}, 'overrides': []},
            'options': {'legend': {'displayMode': 'list', 'placement': 'bottom'},
                        'tooltip': {'mode': 'multi'}},
            'targets': [{'refId': chr(65 + j), 'expr': e, 'legendFormat': l,
                         'datasource': {'type': 'prometheus', 'uid': '${datasource}'}}
                        for j, (e, l) in enumerate(targets)],
        })
        pid += 1
    y += ((len(items) + 2) // 3) * 8

dashboard = {
    'title': 'floodwall', 'uid': 'floodwall', 'schemaVersion': 39, 'version': 1,
    'tags': ['floodwall', 'overload'], 'timezone': 'browser', 'refresh': '10s',
    'time': {'from': 'now-1h', 'to': 'now'},
    'description': 'Every floodwall metric (docs/grafana/README.md). Generated by make_dashboard.py.',
    'templating': {'list': [
        {'name': 'datasource', 'type': 'datasource', 'query': 'prometheus', 'label': 'Prometheus'},
        {'name': 'name', 'type': 'query', 'label': 'layer name', 'includeAll': True, 'multi': True,
         'current': {'text': 'All', 'value': '$__all'}, 'allValue': '.*',
         'datasource': {'type': 'prometheus', 'uid': '${datasource}'},
         'query': {'query': 'label_values({__name__=~"floodwall_.+_requests_total"}, name)', 'refId': 'names'},
         'refresh': 2},
    ]},
    'panels': panels,
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'floodwall.json')
with open(out, 'w') as f:
    json.dump(dashboard, f, indent=2)
    f.write('\n')
print(out, len(panels), 'panels')
