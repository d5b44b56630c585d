"""The queries of examples/prometheus/alerts.yml and examples/grafana/dispatchbox.json, for
scripts/check-metrics.sh (run from the repository root; Python's standard library only).

    monitoring_examples.py rules         the dashboard's queries as a rules file (JSON, which
                                         promtool reads as YAML), for `promtool check rules`
    monitoring_examples.py names SCRAPE  every dispatchbox_*/process_* name the alerts and the
                                         dashboard query must be in the scrape (a /metrics
                                         answer); exit 1 naming those that are not

Dashboard variables are replaced by what Grafana would put there ($__rate_interval by 1m,
the others by .*), so the queries are checked as Prometheus will receive them.
"""

import json
import re
import sys

ALERTS = "examples/prometheus/alerts.yml"
DASHBOARD = "examples/grafana/dispatchbox.json"
NAME = re.compile(r"\b((?:dispatchbox|process)_[a-z_]*[a-z])\b")
# Names the examples may use before a scrape shows them (a WARNING instead of a failure).
NOT_YET: set = set()


def dashboard_queries():
    with open(DASHBOARD, encoding="utf-8") as f:
        dash = json.load(f)
    panels = []
    for p in dash["panels"]:
        panels.append(p)
        panels.extend(p.get("panels", []))
    queries = [("dashboard panel " + p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            # label_values(SELECTOR, LABEL): the selector is the query
            m = re.fullmatch(r"label_values\((.*), *\w+\)", q)
            queries.append(("dashboard variable " + v["name"], m.group(1) if m else q))
    return [(title, grafana_to_promql(q)) for title, q in queries]


def grafana_to_promql(q):
    q = q.replace("$__rate_interval", "1m")
    return re.sub(r"\$\{?\w+\}?", ".*", q)


def alert_queries():
    """The `expr:` values of the alert rules, one line or a folded `>-` block."""
    out, block, indent = [], None, 0
    with open(ALERTS, encoding="utf-8") as f:
        for line in f:
            stripped = line.strip()
            if block is not None:
                if stripped and len(line) - len(line.lstrip()) > indent:
                    block.append(stripped)
                    continue
                out.append(" ".join(block))
                block = None
            m = re.match(r"( *)expr: *(.*)", line)
            if m:
                if m.group(2).startswith(">"):
                    block, indent = [], len(m.group(1))
                else:
                    out.append(m.group(2))
    if block is not None:
        out.append(" ".join(block))
    return out


def scrape_names(path):
    names = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"# TYPE (\S+) (\S+)", line)
            if m:
                names.add(m.group(1))
                if m.group(2) == "histogram":
                    names.update(m.group(1) + s for s in ("_bucket", "_sum", "_count"))
    return names


def main(argv):
    if argv[1:] == ["rules"]:
        rules = [{"record": "dashboard_query_%d" % i, "expr": q}
                 for i, (_, q) in enumerate(dashboard_queries())]
        print(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=1))
        return 0
    if len(argv) == 3 and argv[1] == "names":
        have = scrape_names(argv[2])
        used = {}
        for where, q in [(ALERTS, q) for q in alert_queries()] + dashboard_queries():
            for name in NAME.findall(q):
                used.setdefault(name, where)
        bad = 0
        for name in sorted(set(used) - have):
            if name in NOT_YET:
                print("WARNING: %s (used by %s) is not in the scrape yet" % (name, used[name]))
            else:
                print("%s (used by %s) is not in the scrape" % (name, used[name]), file=sys.stderr)
                bad = 1
        print("%d names used by the alerts and the dashboard, %d in the scrape"
              % (len(used), len(set(used) & have)))
        return bad
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
