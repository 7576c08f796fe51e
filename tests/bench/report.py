#!/usr/bin/env python3
"""Helper for tests/bench/compare.sh.

  report.py record  ...   parse one pgbench run (stdout + per-transaction logs)
                          and append one JSON line to the results file
  report.py metrics URL   dump Sluice's /metrics text to stdout ("n/a" if unreachable)
  report.py report  ...   build results.md / results.csv / PNG plot from the
                          collected JSON lines and print the markdown

Only the Python standard library is needed, except matplotlib for the plot
(skipped with a note if it is missing).
"""

import argparse
import csv
import glob
import json
import math
import os
import re
import sys
import urllib.request

TARGETS = ["direct", "pgbouncer", "sluice"]
TARGET_NAMES = {"direct": "direct", "pgbouncer": "PgBouncer", "sluice": "Sluice"}


# ---------------------------------------------------------------------------
# record
# ---------------------------------------------------------------------------

def percentile(sorted_vals, q):
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q * len(sorted_vals)) - 1))
    return sorted_vals[k]


def parse_pgbench_output(text):
    r = {}
    # With -C every transaction logs in anew, and pgbench reports the rate including that.
    m = re.search(r"^tps = ([\d.]+) \((?:without initial connection time|including reconnection times)\)",
                  text, re.M)
    if m:
        r["tps"] = float(m.group(1))
    m = re.search(r"^latency average = ([\d.]+) ms", text, re.M)
    if m:
        r["lat_avg_ms_pgbench"] = float(m.group(1))
    m = re.search(r"^number of transactions actually processed: (\d+)", text, re.M)
    if m:
        r["txns"] = int(m.group(1))
    m = re.search(r"^number of failed transactions: (\d+)", text, re.M)
    r["failed_txns"] = int(m.group(1)) if m else 0
    m = re.search(r"^initial connection time = ([\d.]+) ms", text, re.M)
    if m:
        r["conn_time_ms"] = float(m.group(1))
    errs = [ln for ln in text.splitlines() if "error" in ln.lower() or "fatal" in ln.lower()]
    r["aborted_clients"] = sum(1 for ln in errs if "aborted" in ln)
    r["error_lines"] = len(errs)
    r["run_aborted"] = "Run was aborted" in text
    if errs:
        r["first_error"] = errs[0][:300]
    return r


def parse_txn_logs(pattern):
    lat_us = []
    failed = 0
    for path in glob.glob(pattern):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                try:
                    lat_us.append(int(parts[2]))
                except ValueError:
                    failed += 1  # "failed" / "skipped" entries
    lat_us.sort()
    if not lat_us:
        return {"log_samples": 0, "log_failed": failed}
    return {
        "log_samples": len(lat_us),
        "log_failed": failed,
        "lat_avg_ms": sum(lat_us) / len(lat_us) / 1000.0,
        "lat_p50_ms": percentile(lat_us, 0.50) / 1000.0,
        "lat_p99_ms": percentile(lat_us, 0.99) / 1000.0,
    }


def parse_histogram(text, name):
    """Sums a Prometheus histogram over all label sets: ({le: count}, sum, count)."""
    buckets, total_sum, total_count = {}, 0.0, 0.0
    if not text or text.strip() == "n/a":
        return None
    found = False
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        try:
            metric, value = line.rsplit(None, 1)
            value = float(value)
        except ValueError:
            continue
        if metric.startswith(name + "_bucket"):
            m = re.search(r'le="([^"]+)"', metric)
            if m:
                le = float("inf") if m.group(1) in ("+Inf", "Inf") else float(m.group(1))
                buckets[le] = buckets.get(le, 0.0) + value
                found = True
        elif metric.startswith(name + "_sum"):
            total_sum += value
            found = True
        elif metric.startswith(name + "_count"):
            total_count += value
            found = True
    return (buckets, total_sum, total_count) if found else None


def histogram_delta(before_text, after_text, name="sluice_pool_wait_seconds"):
    after = parse_histogram(after_text, name)
    if after is None:
        return None
    before = parse_histogram(before_text, name) or ({}, 0.0, 0.0)
    buckets = {le: c - before[0].get(le, 0.0) for le, c in after[0].items()}
    s, n = after[1] - before[1], after[2] - before[2]
    if n <= 0:
        return {"wait_count": 0}
    out = {"wait_count": int(n), "wait_avg_ms": s / n * 1000.0}
    for q, key in ((0.5, "wait_p50_ms"), (0.99, "wait_p99_ms")):
        for le in sorted(buckets):
            if buckets[le] >= q * n:
                out[key] = le * 1000.0 if le != float("inf") else None  # bucket upper bound
                break
    return out


def cmd_record(a):
    rec = {
        "target": a.target, "script": a.script, "mode": a.mode, "clients": a.clients,
        "duration_s": a.duration, "rc": a.rc, "status": a.status,
    }
    if a.note:
        rec["note"] = a.note
    if a.status != "skipped":
        text = open(a.raw, errors="replace").read() if a.raw and os.path.exists(a.raw) else ""
        rec.update(parse_pgbench_output(text))
        if a.logs:
            rec.update(parse_txn_logs(a.logs))
        rec["errors"] = rec.get("failed_txns", 0) + rec.get("aborted_clients", 0) + rec.get("log_failed", 0)
        if rec.get("txns") == 0 and not rec.get("first_error"):
            rec["first_error"] = "no transaction completed (connection phase longer than -T?)"
        if a.rc != 0 or rec.get("run_aborted") or "tps" not in rec:
            rec["status"] = "failed"
        elif rec["errors"]:
            rec["status"] = "errors"
        if a.cpu_ticks is not None and a.cpu_ticks >= 0:
            rec["cpu_s"] = a.cpu_ticks / a.clk_tck
            if rec.get("txns"):
                rec["cpu_us_per_txn"] = rec["cpu_s"] * 1e6 / rec["txns"]
        if a.hwm_kib:
            rec["peak_rss_mib"] = a.hwm_kib / 1024.0
        if a.metrics_before and a.metrics_after:
            try:
                h = histogram_delta(open(a.metrics_before).read(), open(a.metrics_after).read())
            except OSError:
                h = None
            if h:
                rec.update(h)
    with open(a.results, "a") as f:
        f.write(json.dumps(rec) + "\n")
    # One-line progress summary for the console.
    if rec["status"] == "skipped":
        print(f"    {a.target:9s} skipped ({a.note or ''})")
    else:
        def fmt(k, spec):
            v = rec.get(k)
            return format(v, spec) if isinstance(v, (int, float)) else "-"
        print(f"    {a.target:9s} {rec['status']:7s} tps={fmt('tps', '.0f'):>8s} "
              f"avg={fmt('lat_avg_ms', '.3f')}ms p99={fmt('lat_p99_ms', '.3f')}ms "
              f"err={rec.get('errors', 0)} conn={fmt('conn_time_ms', '.0f')}ms"
              + (f" cpu={fmt('cpu_us_per_txn', '.1f')}us/txn rss={fmt('peak_rss_mib', '.1f')}MiB"
                 if a.target != "direct" else "")
              + (f"  [{rec.get('first_error', '')[:120]}]" if rec["status"] != "ok" else ""))


# ---------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------

def cmd_metrics(a):
    try:
        with urllib.request.urlopen(a.url, timeout=1.0) as resp:
            sys.stdout.write(resp.read().decode(errors="replace"))
    except Exception:  # noqa: BLE001 - any failure means "not available"
        sys.stdout.write("n/a\n")


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------

def load_jsonl(path):
    out = []
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    out.append(json.loads(line))
    return out


def f_num(v, spec=".0f", na="-"):
    return format(v, spec) if isinstance(v, (int, float)) else na


def ratio(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return a / b
    return None


def cell_status(r):
    if r is None:
        return None
    if r["status"] == "skipped":
        return "skip"
    if r["status"] == "failed":
        return "FAILED"
    return None


def cmd_report(a):
    runs = load_jsonl(a.results)
    idle = load_jsonl(a.idle)
    meta = json.load(open(a.meta)) if a.meta and os.path.exists(a.meta) else {}
    os.makedirs(a.out, exist_ok=True)

    idx = {}
    for r in runs:
        idx[(r["script"], r["mode"], r["clients"], r["target"])] = r
    combos = []
    for r in runs:
        c = (r["script"], r["mode"], r["clients"])
        if c not in combos:
            combos.append(c)
    script_order = {"select": 0, "tpcb": 1, "connect": 2}
    mode_order = {"simple": 0, "extended": 1, "prepared": 2}
    combos.sort(key=lambda c: (script_order.get(c[0], 9), mode_order.get(c[1], 9), c[2]))

    # ---- CSV: one row per run -------------------------------------------------
    fields = ["script", "mode", "clients", "target", "status", "tps", "txns", "lat_avg_ms", "lat_p50_ms",
              "lat_p99_ms", "lat_avg_ms_pgbench", "errors", "failed_txns", "aborted_clients", "conn_time_ms",
              "cpu_s", "cpu_us_per_txn", "peak_rss_mib", "wait_count", "wait_avg_ms", "wait_p50_ms",
              "wait_p99_ms", "log_samples", "duration_s", "rc", "first_error", "note"]
    with open(os.path.join(a.out, "results.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for c in combos:
            for t in TARGETS:
                r = idx.get(c + (t,))
                if r:
                    w.writerow(r)
        for i in idle:
            w.writerow({"script": "idle", "mode": "-", "clients": i.get("n_ok"), "target": i.get("target"),
                        "status": "ok" if not i.get("n_failed") else "errors", "errors": i.get("n_failed"),
                        "peak_rss_mib": (i.get("hwm_kib") or 0) / 1024.0,
                        "note": f"idle bytes/conn={i.get('bytes_per_conn')}"})

    # ---- Markdown -------------------------------------------------------------
    L = []
    L.append(f"# Sluice vs PgBouncer vs direct PostgreSQL ({meta.get('mode', '?')} run)")
    L.append("")
    if meta:
        L.append(f"- date: {meta.get('date', '?')}; host: {meta.get('host', '?')}; "
                 f"cpus: {meta.get('cpus', '?')}; pgbench -T {meta.get('duration', '?')} -j 2; "
                 f"load average at start {meta.get('loadavg_start', '?')}, at end {meta.get('loadavg_end', '?')}; "
                 f"harness wall time {meta.get('wall_seconds', '?')} s")
        L.append(f"- PostgreSQL: {meta.get('pg_version', '?')}; PgBouncer: {meta.get('pgbouncer_version', '?')}; "
                 f"Sluice: {meta.get('sluice_version', '?')} ({meta.get('sluice_git', '?')})")
        L.append("- pools: transaction mode, 20 server connections (min 20), SCRAM-SHA-256 client auth; "
                 "PostgreSQL fsync=off, synchronous_commit=off, max_connections=2200, scale 10")
        L.append("- everything (pgbench, proxies, PostgreSQL) shares the same machine, so absolute numbers are "
                 "CPU-bound and only the ratios are meaningful")
    L.append("")
    L.append("TPS = pgbench tps (without connection time). Latencies from pgbench per-transaction logs "
             "(avg / p99, ms). CPU = proxy utime+stime (all threads) per transaction, counted from the "
             "moment all clients are connected to the end of the run (the SCRAM login storm is excluded). RSS = proxy VmHWM during the run. D = direct, P = PgBouncer, S = Sluice.")
    L.append("")
    hdr = ["script", "mode", "clients", "TPS D", "TPS P", "TPS S", "S/P", "S/D",
           "avg ms D / P / S", "p99 ms D / P / S", "CPU µs/txn P / S", "CPU S/P",
           "peak RSS MiB P / S", "errors D / P / S", "S wait avg / p99 ms"]
    L.append("| " + " | ".join(hdr) + " |")
    L.append("|" + "|".join(["---"] * len(hdr)) + "|")
    for c in combos:
        d, p, s = (idx.get(c + (t,)) for t in TARGETS)

        def g(r, k, spec=".0f"):
            st = cell_status(r)
            if st:
                return st
            return f_num(r.get(k) if r else None, spec)

        def gv(r, k):
            if r is None or r["status"] in ("skipped", "failed"):
                return None
            return r.get(k)

        script_label = {"select": "-S (select)", "connect": "-S -C (a login per txn)"}.get(c[0], "tpcb-like")
        row = [script_label, c[1], str(c[2]),
               g(d, "tps"), g(p, "tps"), g(s, "tps"),
               f_num(ratio(gv(s, "tps"), gv(p, "tps")), ".2f"),
               f_num(ratio(gv(s, "tps"), gv(d, "tps")), ".2f"),
               " / ".join(g(r, "lat_avg_ms", ".3f") for r in (d, p, s)),
               " / ".join(g(r, "lat_p99_ms", ".3f") for r in (d, p, s)),
               " / ".join(g(r, "cpu_us_per_txn", ".1f") for r in (p, s)),
               f_num(ratio(gv(s, "cpu_us_per_txn"), gv(p, "cpu_us_per_txn")), ".2f"),
               " / ".join(g(r, "peak_rss_mib", ".1f") for r in (p, s)),
               " / ".join(("-" if r is None or r["status"] == "skipped" else str(r.get("errors", 0))
                           + ("!" if r["status"] == "failed" else "")) for r in (d, p, s)),
               ("n/a" if not s or "wait_avg_ms" not in s else
                f"{f_num(s.get('wait_avg_ms'), '.3f')} / {f_num(s.get('wait_p99_ms'), '.3f')}")]
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    L.append("`skip` = not run (PgBouncer 1.18 has no prepared-statement support in transaction mode); "
             "`FAILED` = pgbench exited with an error (see Notes); `!` after an error count = run failed.")
    L.append("")

    # ---- idle clients ---------------------------------------------------------
    if idle:
        L.append("## Idle client memory")
        L.append("")
        L.append("| proxy | connections held | failed | auth request | wrong password rejected | sample SELECT 1 ok "
                 "| RSS before MiB | RSS after MiB | bytes / idle conn | connect time s |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        for i in idle:
            L.append(f"| {TARGET_NAMES.get(i.get('target'), i.get('target'))} | {i.get('n_ok')} | {i.get('n_failed')} "
                     f"| {i.get('auth_request')} | {i.get('wrong_password_rejected')} "
                     f"| {i.get('sample_queries_ok')}/{i.get('sample_size')} "
                     f"| {f_num((i.get('rss_before_kib') or 0) / 1024, '.1f')} "
                     f"| {f_num((i.get('rss_after_kib') or 0) / 1024, '.1f')} "
                     f"| {f_num(i.get('bytes_per_conn'), '.0f')} | {i.get('connect_seconds')} |")
        L.append("")

    # ---- targets --------------------------------------------------------------
    L.append("## Targets")
    L.append("")
    L.append("| goal | measured | verdict |")
    L.append("|---|---|---|")

    def run(script, mode, clients, target):
        r = idx.get((script, mode, clients, target))
        if r is None or r["status"] in ("skipped", "failed"):
            return None
        return r

    def verdict(ok):
        return "n/a" if ok is None else ("PASS" if ok else "**MISS**")

    # Issue 14's targets: TPS and CPU per transaction against PgBouncer in the same run.
    for clients in (50, 500):
        for mode in ("simple", "extended"):
            s_, p_ = (run("select", mode, clients, t) for t in ("sluice", "pgbouncer"))
            if not (s_ and p_):
                continue
            rp = ratio(s_.get("tps"), p_.get("tps"))
            L.append(f"| {clients} clients -S {mode}: Sluice TPS ≥ 1.15× PgBouncer | {f_num(rp, '.2f')}× "
                     f"| {verdict(None if rp is None else rp >= 1.15)} |")
    for clients, goal in ((50, 0.85), (1, 1.0)):
        for mode in ("simple", "extended"):
            s_, p_ = (run("select", mode, clients, t) for t in ("sluice", "pgbouncer"))
            if not (s_ and p_):
                continue
            rc = ratio(s_.get("cpu_us_per_txn"), p_.get("cpu_us_per_txn"))
            L.append(f"| {clients} client{'s' if clients > 1 else ''} -S {mode}: Sluice CPU/txn ≤ {goal}× PgBouncer "
                     f"| {f_num(s_.get('cpu_us_per_txn'), '.1f')} vs {f_num(p_.get('cpu_us_per_txn'), '.1f')} µs "
                     f"= {f_num(rc, '.2f')}× | {verdict(None if rc is None else rc <= goal)} |")
    by_target = {i.get("target"): i for i in idle}
    if "sluice" in by_target:
        b = by_target["sluice"].get("bytes_per_conn")
        pb = by_target.get("pgbouncer", {}).get("bytes_per_conn")
        L.append(f"| idle client memory ≤ 800 B/conn | {f_num(b, '.0f')} B/conn (PgBouncer {f_num(pb, '.0f')}) "
                 f"| {verdict(None if b is None else b <= 800)} |")
    logins = {t: run("connect", "simple", c, t) for (sc, _, c, t) in idx if sc == "connect"}
    if logins.get("sluice") and logins.get("pgbouncer"):
        rl = ratio(logins["sluice"].get("tps"), logins["pgbouncer"].get("tps"))
        L.append(f"| new SCRAM logins/s ≥ 2× PgBouncer | {f_num(logins['sluice'].get('tps'), '.0f')} vs "
                 f"{f_num(logins['pgbouncer'].get('tps'), '.0f')}/s = {f_num(rl, '.2f')}× "
                 f"| {verdict(None if rl is None else rl >= 2.0)} |")
    for script in ("select", "tpcb"):
        for mode in ("simple", "extended", "prepared"):
            r2000 = idx.get((script, mode, 2000, "sluice"))
            s50 = run(script, mode, 50, "sluice")
            if r2000 is None or r2000["status"] == "skipped":
                continue
            errs = r2000.get("errors", 0)
            failed = r2000["status"] == "failed"
            rr = ratio(r2000.get("tps") if not failed else None, s50 and s50.get("tps"))
            ok = (not failed) and errs == 0
            ctx = []
            for t in ("pgbouncer", "direct"):
                a2, a50 = run(script, mode, 2000, t), run(script, mode, 50, t)
                rt = ratio(a2 and a2.get("tps"), a50 and a50.get("tps"))
                if rt is not None:
                    ctx.append(f"{TARGET_NAMES[t]} {rt:.2f}×")
            L.append(f"| 2000 clients {'-S' if script == 'select' else 'tpcb'} {mode}: zero errors "
                     f"| {'FAILED, ' if failed else ''}{errs} errors; TPS {f_num(rr, '.2f')}× the 50-client figure"
                     f"{' (for comparison: ' + ', '.join(ctx) + ')' if ctx else ''} "
                     f"| {verdict(ok)} |")
    L.append("| checkout latency from Sluice's `sluice_pool_wait_seconds` histogram (optional) "
             f"| {meta.get('metrics', 'n/a')} | - |")
    L.append("")

    # ---- losses and notes -----------------------------------------------------
    losses = []
    for c in combos:
        s, p, d = (run(*c, t) for t in ("sluice", "pgbouncer", "direct"))
        if s and p and s.get("tps") and p.get("tps") and s["tps"] < p["tps"]:
            losses.append(f"- {c[0]} {c[1]} {c[2]} clients: Sluice {s['tps']:.0f} TPS vs PgBouncer "
                          f"{p['tps']:.0f} ({(s['tps'] / p['tps'] - 1) * 100:+.1f}%)")
    L.append("## Where Sluice is slower than PgBouncer")
    L.append("")
    L.extend(losses or ["- nowhere (TPS)"])
    L.append("")
    notes = []
    for c in combos:
        for t in TARGETS:
            r = idx.get(c + (t,))
            if r and r["status"] in ("failed", "errors"):
                notes.append(f"- {TARGET_NAMES[t]} {c[0]} {c[1]} {c[2]} clients: {r['status']} "
                             f"(rc={r.get('rc')}, errors={r.get('errors', 0)}): "
                             f"`{(r.get('first_error') or '').strip()[:250]}`")
    for i in idle:
        if i.get("n_failed") or i.get("errors"):
            notes.append(f"- idle test {i.get('target')}: {i.get('n_failed')} failed: {i.get('errors')}")
    L.append("## Notes (failures / errors)")
    L.append("")
    L.extend(notes or ["- none"])
    L.append("")
    md = "\n".join(L)
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write(md)
    print(md)

    # ---- plot -----------------------------------------------------------------
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not available: no plot)", file=sys.stderr)
        return
    for script, mode in (("select", "simple"), ("tpcb", "simple")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        any_line = False
        for t in TARGETS:
            pts = sorted((c[2], idx[c + (t,)]["tps"]) for c in combos
                         if c[0] == script and c[1] == mode and c + (t,) in idx
                         and idx[c + (t,)]["status"] not in ("skipped", "failed") and "tps" in idx[c + (t,)])
            if pts:
                any_line = True
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=TARGET_NAMES[t])
        if not any_line:
            plt.close(fig)
            continue
        ax.set_xscale("log")
        ax.set_xlabel("clients (log scale)")
        ax.set_ylabel("TPS")
        ax.set_ylim(bottom=0)
        ax.set_title(f"pgbench {'-S' if script == 'select' else 'tpcb-like'} -M {mode}, pool 20, "
                     f"-T {meta.get('duration', '?')}")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = os.path.join(a.out, f"tps_{script}_{mode}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(f"(plot: {path})", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("--results", required=True)
    r.add_argument("--target", required=True)
    r.add_argument("--script", required=True)
    r.add_argument("--mode", required=True)
    r.add_argument("--clients", type=int, required=True)
    r.add_argument("--duration", type=float, default=0)
    r.add_argument("--rc", type=int, default=0)
    r.add_argument("--status", default="ok")
    r.add_argument("--note", default="")
    r.add_argument("--raw")
    r.add_argument("--logs")
    r.add_argument("--cpu-ticks", type=int)
    r.add_argument("--clk-tck", type=float, default=100.0)
    r.add_argument("--hwm-kib", type=int)
    r.add_argument("--metrics-before")
    r.add_argument("--metrics-after")
    m = sub.add_parser("metrics")
    m.add_argument("url")
    p = sub.add_parser("report")
    p.add_argument("--results", required=True)
    p.add_argument("--idle")
    p.add_argument("--meta")
    p.add_argument("--out", required=True)
    a = ap.parse_args()
    {"record": cmd_record, "metrics": cmd_metrics, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
