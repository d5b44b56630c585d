#!/usr/bin/env python3
"""scripts/soak.sh's recorder and judge (standard library only; psql for the database).

  soak_sample.py sample OUT DSN INTERVAL UNTIL METRICS_PORT
      Every INTERVAL seconds until the Unix time UNTIL, appends one row to OUT/samples.csv:
      events delivered (lines the webhook receiver recorded in OUT/received.txt), their
      commit-to-handler p50/p99/max, the rows produced, RSS/open fds/threads of the supervisor
      (its pid in OUT/daemon.pid) and of each worker slot, table/index sizes, dead tuples,
      autovacuum runs, the claim statement's mean time (pg_stat_statements), the rows
      retention removed, and the faults (OUT/faults.log) that happened in the interval.
  soak_sample.py report OUT DSN MINUTES
      The exactly-once check over every event (ids in the table and its archive against the
      receiver's record), the verdict against issue 23's targets as a Markdown table
      (OUT/verdict.md, also printed) and the gnuplot script for OUT/soak.png (OUT/plot.gp).

received.txt lines: `evt_ID RECEIVED T` (examples/webhook_receiver.rs); T is the inserting
transaction's clock_timestamp(), so RECEIVED - T is commit-to-handler plus the time the
insert took before its commit (microseconds here).
"""

import csv
import json
import os
import subprocess
import sys
import time
import urllib.request

COLUMNS = [
    "minute", "epoch", "delivered", "produced", "p50_ms", "p99_ms", "max_ms", "due",
    "sup_rss_mb", "sup_fds", "sup_threads",
    "w0_rss_mb", "w0_fds", "w0_threads", "w1_rss_mb", "w1_fds", "w1_threads",
    "table_mb", "index_mb", "archive_mb", "live_tup", "dead_tup", "autovacuum_runs",
    "autoanalyze_runs", "claim_ms", "claim_calls", "retention_removed", "retention_ms",
    "faults",
]

CLAIM_LIKE = "%ORDER BY next_run_at%FOR UPDATE SKIP LOCKED%"
RETAIN_LIKE = "%WITH span AS%"


def psql(dsn, sql):
    """Rows of `sql` as lists of text; [] when the server does not answer (a restart)."""
    try:
        out = subprocess.run(
            ["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-d", dsn,
             "-c", sql],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [line.split("\t") for line in out.splitlines() if line]


def proc_stats(pid):
    """(RSS MB, open fds, threads) of a live pid, or None."""
    try:
        rss = threads = None
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return (round(rss, 1), fds, threads) if rss is not None else None
    except OSError:
        return None


def children(pid):
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return out


def worker_pids(sup):
    """{slot: pid} of the supervisor's worker children (`--worker-index N` in argv)."""
    found = {}
    for child in children(sup):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"--worker-index" in argv:
            i = argv.index(b"--worker-index")
            if i + 1 < len(argv):
                found[int(argv[i + 1])] = child
    return found


def metric(port, name):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[-1])
    except (OSError, ValueError):
        return None
    return None


def quantile(sorted_values, q):
    if not sorted_values:
        return ""
    return round(sorted_values[int((len(sorted_values) - 1) * q + 0.5)], 2)


class Tail:
    """Reads the complete lines appended to a file since the last call."""

    def __init__(self, path):
        self.path, self.offset = path, 0

    def lines(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode(errors="replace").splitlines()


def latencies(lines):
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[2] != "-":
            try:
                out.append((float(parts[1]) - float(parts[2])) * 1000)
            except ValueError:
                pass
    return out


def db_row(dsn):
    """The database's figures now, as a dict (missing keys: the server did not answer)."""
    rows = psql(dsn, f"""
        SELECT pg_relation_size('outbox_event') / 1048576.0,
               pg_indexes_size('outbox_event') / 1048576.0,
               coalesce(pg_total_relation_size(to_regclass('outbox_archive')), 0) / 1048576.0,
               s.n_live_tup, s.n_dead_tup, s.autovacuum_count, s.autoanalyze_count,
               (SELECT last_value FROM outbox_event_id_seq),
               (SELECT count(*) FROM outbox_event WHERE status IN ('pending', 'retry')
                  AND next_run_at <= now()),
               (SELECT coalesce(sum(calls), 0) || ' ' || coalesce(sum(total_exec_time), 0)
                  FROM pg_stat_statements WHERE query LIKE '{CLAIM_LIKE}'),
               (SELECT coalesce(sum(calls), 0) || ' ' || coalesce(sum(total_exec_time), 0)
                  FROM pg_stat_statements WHERE query LIKE '{RETAIN_LIKE}')
        FROM pg_stat_user_tables s WHERE s.relname = 'outbox_event'""")
    if not rows:
        return {}
    r = rows[0]
    claim_calls, claim_ms = (float(x) for x in r[9].split())
    ret_calls, ret_ms = (float(x) for x in r[10].split())
    return {
        "table_mb": round(float(r[0]), 1), "index_mb": round(float(r[1]), 1),
        "archive_mb": round(float(r[2]), 1), "live_tup": int(r[3]), "dead_tup": int(r[4]),
        "av": int(r[5]), "aa": int(r[6]), "seq": int(r[7]), "due": int(r[8]),
        "claim": (claim_calls, claim_ms), "retain": (ret_calls, ret_ms),
    }


def delta(now, before):
    """A counter's growth; the value itself after a reset (a server restart)."""
    if before is None:
        return None
    return now - before if now >= before else now


def sample(out, dsn, interval, until, metrics_port):
    received = Tail(os.path.join(out, "received.txt"))
    faults = Tail(os.path.join(out, "faults.log"))
    path = os.path.join(out, "samples.csv")
    fresh = not os.path.exists(path)
    start = time.time()
    prev = db_row(dsn)
    prev_removed = metric(metrics_port, "dispatchbox_retention_removed_total") or 0.0
    received.lines()
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if fresh:
            w.writerow(COLUMNS)
        n = 0
        while True:
            n += 1
            wake = start + n * interval
            if wake > until + 1:
                return
            time.sleep(max(0.0, wake - time.time()))
            got = received.lines()
            lat = sorted(latencies(got))
            now = db_row(dsn)
            row = {"minute": round(n * interval / 60, 3), "epoch": round(time.time(), 1),
                   "delivered": len(got), "p50_ms": quantile(lat, 0.5),
                   "p99_ms": quantile(lat, 0.99), "max_ms": round(lat[-1], 1) if lat else ""}
            try:
                with open(os.path.join(out, "daemon.pid")) as p:
                    sup = int(p.read().strip())
            except (OSError, ValueError):
                sup = None
            procs = {"sup": sup}
            procs.update({f"w{k}": v for k, v in worker_pids(sup).items()} if sup else {})
            for name in ("sup", "w0", "w1"):
                st = proc_stats(procs[name]) if procs.get(name) else None
                for key, v in zip(("rss_mb", "fds", "threads"), st or ("", "", "")):
                    row[f"{name}_{key}"] = v
            if now:
                for key in ("table_mb", "index_mb", "archive_mb", "live_tup", "dead_tup", "due"):
                    row[key] = now[key]
                if prev:
                    row["produced"] = delta(now["seq"], prev["seq"])
                    row["autovacuum_runs"] = delta(now["av"], prev["av"])
                    row["autoanalyze_runs"] = delta(now["aa"], prev["aa"])
                    calls = delta(now["claim"][0], prev["claim"][0])
                    ms = delta(now["claim"][1], prev["claim"][1])
                    row["claim_calls"] = int(calls)
                    row["claim_ms"] = round(ms / calls, 4) if calls else ""
                    calls = delta(now["retain"][0], prev["retain"][0])
                    ms = delta(now["retain"][1], prev["retain"][1])
                    row["retention_ms"] = round(ms / calls, 2) if calls else ""
                prev = now
            removed = metric(metrics_port, "dispatchbox_retention_removed_total")
            if removed is not None:
                row["retention_removed"] = int(delta(removed, prev_removed))
                prev_removed = removed
            row["faults"] = ";".join(line.split()[1] for line in faults.lines() if line.split())
            w.writerow([row.get(c, "") for c in COLUMNS])
            f.flush()


# ---------------------------------------------------------------------------------------
# The report


def read_samples(out):
    with open(os.path.join(out, "samples.csv")) as f:
        return list(csv.DictReader(f))


def numbers(rows, col):
    out = []
    for r in rows:
        try:
            out.append(float(r[col]))
        except (KeyError, ValueError):
            pass
    return out


def mean(values):
    return sum(values) / len(values) if values else None


def dump_events(out, dsn):
    """OUT/events.tsv: `id attempts status producer` for every row of the table and its
    archive (producer: 1 for the producer's events, 0 for a prefill's). Written while the
    server runs, so that the report can be made again after it is gone."""
    path = os.path.join(out, "events.tsv")
    sql = """COPY (SELECT id, attempts, status, (payload ? 't')::int FROM outbox_event
                   UNION ALL
                   SELECT id, attempts, status, (payload ? 't')::int FROM outbox_archive)
             TO STDOUT"""
    try:
        with open(path + ".new", "w") as f:
            subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-c", sql],
                           stdout=f, timeout=1800, check=True)
        os.replace(path + ".new", path)
    except (subprocess.SubprocessError, OSError) as e:
        print(f"soak_sample.py: could not dump the events ({e}); using {path} as it is",
              file=sys.stderr)
    return path


def exactly_once(out):
    """(committed, delivered distinct, lost ids, duplicates, still waiting, claimed twice,
    duplicates of events claimed once), over every id: the committed ones are the producer's
    rows in the table or its archive (retention moves each row in one statement, so a row is in
    exactly one of them). Byte arrays indexed by id: millions of events fit in a few megabytes."""
    events = []
    with open(os.path.join(out, "events.tsv")) as f:
        for line in f:
            i, attempts, status, producer = line.split("\t")
            if producer.strip() == "1":
                events.append((int(i), int(attempts), status))
    top = max([e[0] for e in events] + [0])
    committed, waiting, reclaimed = bytearray(top + 1), bytearray(top + 1), bytearray(top + 1)
    for i, attempts, status in events:
        committed[i] = 1
        waiting[i] = status in ("pending", "retry")
        # Claimed more than once: a lease lost at a kill or restart (a release at a graceful
        # stop gives its attempt back).
        reclaimed[i] = attempts >= 2
    seen = bytearray(top + 1)
    dups = unexplained = 0
    with open(os.path.join(out, "received.txt")) as f:
        for line in f:
            if line.startswith("evt_"):
                i = int(line[4:line.index(" ")])
                if i > top:
                    continue
                if seen[i]:
                    dups += 1
                    unexplained += 0 if reclaimed[i] else 1
                else:
                    seen[i] = 1
    lost = [i for i in range(top + 1) if committed[i] and not seen[i] and not waiting[i]]
    return sum(committed), sum(seen), lost, dups, sum(waiting), sum(reclaimed), unexplained


def in_flight_at_faults(out):
    total, kinds = 0, {}
    with open(os.path.join(out, "faults.log")) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3:
                kinds[parts[1]] = kinds.get(parts[1], 0) + 1
                if parts[2].isdigit():
                    total += int(parts[2])
    return total, kinds


def pooled_p99(out, t0, t1):
    """p99 (ms) over every event received between the Unix times t0 and t1."""
    lat = []
    with open(os.path.join(out, "received.txt")) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] != "-" and t0 <= float(parts[1]) < t1:
                lat.append((float(parts[1]) - float(parts[2])) * 1000)
    lat.sort()
    return quantile(lat, 0.99) or None, len(lat)


def report(out, dsn, minutes):
    rows = read_samples(out)
    total = minutes
    base = [r for r in rows if total / 12 <= float(r["minute"]) < total / 4 + 1e-9]
    last = [r for r in rows if float(r["minute"]) > total - total / 6 + 1e-9]
    verdict = []

    def judge(label, col, limit, lower_ok=True):
        b, l = mean(numbers(base, col)), mean(numbers(last, col))
        if b is None or l is None:
            verdict.append((label, "-", "-", "-", "no data"))
            return
        ratio = l / b if b else (1.0 if l == 0 else float("inf"))
        if limit == 0.10:
            ok = abs(ratio - 1) <= 0.10 or (lower_ok and ratio < 1)
            rule = "at most +10 %" if lower_ok else "within 10 %"
        else:
            ok = ratio <= limit
            rule = f"<= {limit}x"
        verdict.append((label, f"{b:.2f}", f"{l:.2f}", f"{ratio:.2f} ({rule})",
                        "PASS" if ok else "MISS"))

    for proc in ("sup", "w0", "w1"):
        for key, unit in (("rss_mb", "RSS MB"), ("fds", "open fds"), ("threads", "threads")):
            judge(f"{proc} {unit}", f"{proc}_{key}", 0.10)
    judge("claim statement mean ms", "claim_ms", 1.5)
    judge("p99 commit-to-handler ms (per-sample mean)", "p99_ms", 1.5)
    t = [float(r["epoch"]) for r in rows]
    step = (t[1] - t[0]) if len(t) > 1 else 60
    if base and last:
        pb, nb = pooled_p99(out, float(base[0]["epoch"]) - step, float(base[-1]["epoch"]))
        pl, nl = pooled_p99(out, float(last[0]["epoch"]) - step, float(last[-1]["epoch"]))
        if pb and pl:
            verdict.append(("p99 commit-to-handler ms (all events of the window)", f"{pb:.1f}",
                            f"{pl:.1f}", f"{pl / pb:.2f} (<= 1.5x)",
                            "PASS" if pl <= 1.5 * pb else "MISS"))
    for r in rows:
        try:
            r["size_mb"] = float(r["table_mb"]) + float(r["index_mb"])
        except ValueError:
            r["size_mb"] = ""
    b, l = numbers(base, "size_mb"), numbers(last, "size_mb")
    if b and l:
        verdict.append(("table + index MB (max)", f"{max(b):.1f}", f"{max(l):.1f}",
                        f"{max(l) / max(b):.2f} (<= 1.5x)",
                        "PASS" if max(l) <= 1.5 * max(b) else "MISS"))
    dump_events(out, dsn)
    committed, delivered, lost, dups, waiting, reclaimed, unexplained = exactly_once(out)
    counted, kinds = in_flight_at_faults(out)
    verdict.append(("lost events", "-", str(len(lost)), f"of {committed} committed",
                    "PASS" if not lost else "MISS"))
    verdict.append(("duplicate deliveries", "-", str(dups),
                    f"<= {reclaimed} in flight at the kills and restarts (claimed twice: "
                    f"attempts >= 2; {counted} leased when counted at the faults); "
                    f"{unexplained} of an event claimed once",
                    "PASS" if dups <= reclaimed and unexplained == 0 else "MISS"))
    lines = [
        f"Soak: {minutes} min, {len(rows)} samples; baseline = minutes "
        f"{total / 12:g}-{total / 4:g}, last = minutes {total - total / 6:g}-{total:g}.",
        f"Events committed {committed}, delivered (distinct) {delivered}, still waiting "
        f"{waiting}; faults: " + ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items())),
        "",
        "| target | minutes 5-15 (baseline) | last 10 minutes | ratio | verdict |",
        "| --- | --- | --- | --- | --- |",
    ]
    if minutes != 60:
        lines[3] = lines[3].replace("minutes 5-15", f"min {total / 12:g}-{total / 4:g}").replace(
            "last 10 minutes", f"last {total / 6:g} min")
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in verdict]
    if lost:
        lines.append(f"\nLost ids (first 20): {lost[:20]}")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "verdict.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "verdict.json"), "w") as f:
        json.dump({"verdict": verdict, "lost": len(lost), "duplicates": dups,
                   "in_flight": reclaimed, "counted_at_faults": counted, "committed": committed}, f)
    print(text)
    write_plot(out, rows)
    return 0 if all(v[4] != "MISS" for v in verdict) else 1


def write_plot(out, rows):
    faults = []
    for r in rows:
        for kind in filter(None, r["faults"].split(";")):
            faults.append((float(r["minute"]), kind))
    arrows = "\n".join(
        f"set arrow from {m},graph 0 to {m},graph 1 nohead lc rgb '#bbbbbb' dt 2"
        for m, _ in faults)
    kills = sum(1 for _, k in faults if k == "worker-kill")
    labels = "; ".join([f"{k} at {m:g}" for m, k in faults if k != "worker-kill"]
                       + ([f"worker-kill x{kills}"] if kills else []))
    col = {c: i + 1 for i, c in enumerate(COLUMNS)}
    gp = f"""set terminal pngcairo size 1400,1000 font ',9' noenhanced
set output '{out}/soak.png'
set datafile separator ','
set key autotitle columnhead top left
set xlabel 'minute'
set grid
{arrows}
set multiplot layout 3,2 title 'dispatchbox soak (faults, dashed: {labels})' font ',9'
set title 'events per sample'
plot '{out}/samples.csv' using {col['minute']}:{col['delivered']} with lines, \\
     '' using {col['minute']}:{col['produced']} with lines
set title 'commit-to-handler latency (ms, log)'
set logscale y
plot '' using {col['minute']}:{col['p50_ms']} with lines, \\
     '' using {col['minute']}:{col['p99_ms']} with lines
unset logscale y
set title 'RSS (MB)'
plot '' using {col['minute']}:{col['sup_rss_mb']} with lines, \\
     '' using {col['minute']}:{col['w0_rss_mb']} with lines, \\
     '' using {col['minute']}:{col['w1_rss_mb']} with lines
set title 'open fds and threads'
plot '' using {col['minute']}:{col['sup_fds']} with lines, \\
     '' using {col['minute']}:{col['w0_fds']} with lines, \\
     '' using {col['minute']}:{col['w1_fds']} with lines, \\
     '' using {col['minute']}:{col['w0_threads']} with lines, \\
     '' using {col['minute']}:{col['w1_threads']} with lines
set title 'table and index (MB); dead tuples (k, right axis)'
set y2tics
plot '' using {col['minute']}:{col['table_mb']} with lines, \\
     '' using {col['minute']}:{col['index_mb']} with lines, \\
     '' using {col['minute']}:(column({col['dead_tup']})/1000) axes x1y2 with lines title 'dead_tup (k)'
set title 'claim statement mean (ms, log); autovacuum runs per sample (points, right axis)'
set logscale y
set y2range [0:*]
plot '' using {col['minute']}:{col['claim_ms']} with lines, \\
     '' using {col['minute']}:{col['autovacuum_runs']} axes x1y2 with points pt 7 ps 0.6
unset multiplot
"""
    with open(os.path.join(out, "plot.gp"), "w") as f:
        f.write(gp)


def main(argv):
    if len(argv) >= 6 and argv[0] == "sample":
        sample(argv[1], argv[2], float(argv[3]), float(argv[4]), int(argv[5]))
        return 0
    if len(argv) >= 4 and argv[0] == "report":
        return report(argv[1], argv[2], float(argv[3]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
