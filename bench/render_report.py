#!/usr/bin/env python3
"""render_report.py: turns ktls-bench JSON into docs/BENCHMARKS.md tables and
a PNG chart.

    render_report.py --doc docs/BENCHMARKS.md --chart-dir docs/benchmarks \
        [--machine machine.json] RESULT.json...

Each RESULT.json is one environment (one kernel: "uml-6.1", "uml-7.2",
"host"), written by ktls-bench --json (schema ktls-bench/1, see
bench/report.h) or by any other producer of the same shape; files with the
same environment label are merged, so a second producer (the static file
benchmark) only adds comparisons. Environments are rendered one after the
other and never mixed in one table: a UML figure is never put next to a
host figure.

The doc keeps its hand-written text; only the blocks between
<!-- generated:NAME --> and <!-- /generated:NAME --> are replaced
(NAME: conditions, targets, results, handshake_syscalls). The chart is
drawn with gnuplot.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

# Case order and display names; unknown cases keep their id and come last.
CASE_NAMES = {
    "af_alg": "kernel AEAD via AF_ALG (ceiling)",
    "ktls_write": "ktls `Write`",
    "ktls_sendfile": "ktls `SendFile`",
    "openssl_write": "OpenSSL `SSL_write`",
    "openssl_ktls_write": "OpenSSL kTLS `SSL_write`",
    "openssl_ktls_sendfile": "OpenSSL kTLS `SSL_sendfile`",
    "openssl_read": "OpenSSL `SSL_read`",
    "openssl_read_ahead": "OpenSSL `SSL_read`, read-ahead",
    "ktls_read": "ktls `Read` (RX in the kernel)",
    "ktls_read_no_pad": "ktls `Read`, `rx_expect_no_pad`",
    "ktls_read_padding_peer": "ktls `Read`, a peer that pads every record",
    "ktls_read_no_pad_padding_peer": "ktls `Read`, `rx_expect_no_pad`, a peer that pads every record",
    "openssl": "OpenSSL",
    "openssl_release_buffers": "OpenSSL, `SSL_MODE_RELEASE_BUFFERS`",
    "ktls": "ktls",
    "ktls_handshake": "ktls, its own handshake",
    "ktls_rx_user": "ktls default here (RX in OpenSSL)",
    "openssl_client_cert": "OpenSSL, client certificates",
    "ktls_client_cert": "ktls, client certificates",
    "ktls_client_cert_not_kept": "ktls, client certificates, `keep_peer_certificates = false`",
    "ktls_no_tickets": "ktls, `session_tickets = false`",
    "nginx": "nginx, one worker, `sendfile on`, OpenSSL's kTLS",
    "ktls_serve": "`ktls-serve --threads 1`",
    "ktls_serve_no_offload": "`ktls-serve --threads 1 --no-offload`",
    "ktls_serve_metrics": "`ktls-serve --threads 1 --metrics`",
    "export_import": "`Export` + `Import`, in one process",
    "unix_socket": "`SendConnection` + `ReceiveConnection` over AF_UNIX",
    "ktls_serve_rx": "`ktls-serve --threads 1 --rx`",
    "ktls_serve_no_rx": "`ktls-serve --threads 1 --no-rx`",
    "ktls_serve_cache": "`ktls-serve --threads 1 --open-file-cache`",
}
GROUP_TITLES = {
    "bulk_send": "Bulk send, one connection (MB/s, higher is better; ratio to the AF_ALG ceiling)",
    "bulk_receive": "Bulk receive, one connection (MB/s, higher is better; ratio to OpenSSL `SSL_read`)",
    "bulk_receive_no_pad": "Bulk receive with `TLS_RX_EXPECT_NO_PAD` (MB/s, higher is better; ratio to ktls `Read`)",
    "handshakes": "Handshakes per second (higher is better; ratio to OpenSSL)",
    "idle_memory": "Memory per idle connection, server side (bytes, lower is better; ratio to OpenSSL)",
    "client_memory": "Memory per idle connection, client side (bytes, lower is better; ratio to OpenSSL)",
    "static_files": "Static files over HTTPS, wrk with keep-alive (higher is better; ratio to nginx)",
    "moves": "Moving a live connection (moves/s, higher is better; bytes of state, lower is better)",
    "serve_costs": "Syscalls (strace -c, exact) and memory per request and per connection (lower is better; "
                   "ratio to nginx)",
}
CHART_CASES = ["af_alg", "ktls_write", "ktls_sendfile", "openssl_write", "openssl_ktls_write", "openssl_ktls_sendfile"]


def load(paths):
    """Environments by label, in the order first seen, with merged comparisons."""
    envs = {}
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        if data.get("schema") != "ktls-bench/1":
            sys.exit(f"render_report: {path}: not ktls-bench/1 JSON")
        label = data["environment"].get("label") or os.path.splitext(os.path.basename(path))[0]
        env = envs.setdefault(label, {"environment": data["environment"], "parameters": {}, "comparisons": []})
        for key, value in data.get("parameters", {}).items():
            env["parameters"].setdefault(key, value)  # The first file's run count and sizes describe the env.
        env["comparisons"].extend(data["comparisons"])
    return envs


def num(v):
    if v is None:
        return "-"
    if abs(v) >= 100 or v == 0:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cell(case, show_ratio=True):
    if case is None:
        return ""
    if case["status"] != "ok":
        return "n/a"
    text = f"**{num(case['median'])}** ({num(case['min'])}-{num(case['max'])})"
    if show_ratio and case.get("ratio") is not None:
        text += f" {case['ratio']:.2f}x"
    return text


def case_order(ids):
    known = [c for c in CASE_NAMES if c in ids]
    return known + [c for c in ids if c not in CASE_NAMES]


def find(env, comparison_id):
    for comparison in env["comparisons"]:
        if comparison["id"] == comparison_id:
            return comparison
    return None


def case_of(comparison, case_id):
    if comparison is None:
        return None
    for case in comparison["cases"]:
        if case["id"] == case_id:
            return case
    return None


def column(comparison):
    """A comparison's column heading: its "column" if it has one, else its id
    after the group."""
    return comparison.get("column") or comparison["id"].split(".", 1)[-1]


def env_title(label, env):
    e = env["environment"]
    kind = f"UML {e.get('uml_kernel') or ''}".strip() if e.get("uml") else "host"
    return f"{label}: Linux {e['kernel']} ({kind})"


def render_conditions(envs, machine):
    lines = []
    if machine:
        lines.append(f"- Host: {machine.get('cpu', '?')}, {machine.get('cpus', '?')} CPUs, "
                     f"host kernel {machine.get('kernel', '?')} ({'with' if machine.get('host_ktls') else 'without'} kTLS), "
                     f"run {machine.get('date', '?')}, load average at the start {machine.get('loadavg', '?')}.")
    for label, env in envs.items():
        e, p = env["environment"], env["parameters"]
        where = ("a User-Mode Linux guest: one virtual CPU, generic C kernel crypto (no AES-NI), "
                 "every syscall a round trip through ptrace" if e.get("uml") else "directly on the host kernel")
        ciphers = ", ".join(f"{c['cipher']} tx={'y' if c['tx'] else 'n'} rx={'y' if c['rx'] else 'n'}"
                            for c in e.get("tls13_ciphers", []))
        lines.append(f"- **{env_title(label, env)}**: {where}; {e.get('openssl', '?')}; "
                     f"TLS 1.3 rekey in the kernel: {'yes' if e.get('ktls_rekey') else 'no'}; "
                     f"kernel TLS 1.3 ciphers: {ciphers}.")
        if p.get("runs"):
            lines.append(f"  {p.get('runs')} runs per case (median, min-max); bulk runs "
                         f"{p.get('bulk_bytes', 0) >> 20} MiB in {p.get('chunk_bytes', 0) >> 10} KiB calls; "
                         f"{p.get('handshakes_per_run')} handshakes per run; {p.get('idle_connections')} idle "
                         f"connections per memory run; this environment took {e.get('seconds', 0):.0f} s.")
        static = p.get("static_files")
        if static:
            lines.append(f"  Static files: {static['runs']} runs per case; {static['nginx']}; wrk, one thread, "
                         f"keep-alive, " + ", ".join(f"{size}: {static['connections'][size]} connections for "
                                                     f"{static['seconds'][size]} s" for size in static["sizes"]) +
                         f"; TLS 1.3 {static['suite']} only; this took {static['took_seconds']} s.")
        for skipped in p.get("suites_skipped", []):
            lines.append(f"  Not measured: {skipped['cipher']}: {skipped['reason']}.")
    return "\n".join(lines)


def render_results(envs, chart_rel):
    out = []
    for label, env in envs.items():
        out.append(f"### {env_title(label, env)}\n")
        groups = []
        for comparison in env["comparisons"]:
            # Syscall counts have their own block, by syscall name.
            if comparison["group"] not in groups and comparison["group"] != "handshake_syscalls":
                groups.append(comparison["group"])
        for group in groups:
            comparisons = [c for c in env["comparisons"] if c["group"] == group]
            title = GROUP_TITLES.get(group) or f"{group} ({comparisons[0]['unit']})"
            out.append(f"**{title}**\n")
            columns = [column(c) for c in comparisons]
            ids = []
            for comparison in comparisons:
                ids.extend(c["id"] for c in comparison["cases"] if c["id"] not in ids)
            out.append("| case | " + " | ".join(columns) + " |")
            out.append("| --- |" + " --- |" * len(columns))
            for case_id in case_order(ids):
                row = [cell(case_of(c, case_id)) for c in comparisons]
                out.append(f"| {CASE_NAMES.get(case_id, case_id)} | " + " | ".join(row) + " |")
            out.append("")
            # Notes: the offload state and counters seen, and why a case is n/a.
            notes = []
            for case_id in case_order(ids):
                seen = set()
                for c in comparisons:
                    case = case_of(c, case_id)
                    if case is None:
                        continue
                    text = case.get("reason") if case["status"] != "ok" else case.get("notes")
                    if text and text not in seen:
                        seen.add(text)
                        col = column(c)
                        prefix = f"{col}: " if len(comparisons) > 1 else ""
                        notes.append((case_id, prefix + text))
            if notes:
                grouped = {}
                for case_id, text in notes:
                    grouped.setdefault(case_id, []).append(text)
                out.append("<details><summary>where the records were protected, counters, why n/a</summary>\n")
                for case_id, texts in grouped.items():
                    out.append(f"- {CASE_NAMES.get(case_id, case_id)}: " + "; ".join(texts))
                out.append("\n</details>\n")
        if chart_rel:
            out.append(f"![bulk send, {label}]({chart_rel}/bulk_send-{label}.png)\n")
    return "\n".join(out)


def count(v):
    """A syscall count: whole when it is (they are exact), else 2 decimals."""
    return f"{v:.0f}" if abs(v - round(v)) < 0.005 else f"{v:.2f}"


def render_handshake_syscalls(envs):
    """Per environment, one table: a row per syscall, a column per side,
    handshake kind and case (OpenSSL only, ktls), the totals last."""
    out = []
    for label, env in envs.items():
        comparisons = [c for c in env["comparisons"] if c["group"] == "handshake_syscalls"]
        if not comparisons:
            continue
        columns = [(c, case_of(c, kind)) for c in comparisons for kind in ("openssl", "ktls", "ktls_handshake")]
        columns = [(c, case) for c, case in columns if case and case["status"] == "ok"]
        names = sorted(set().union(*(case.get("breakdown", {}) for _, case in columns)))
        out.append(f"**{env_title(label, env)}**\n")
        out.append("| syscall | " + " | ".join(f"{column(c).replace('_', ', ')}: {CASE_NAMES.get(case['id'], case['id'])}"
                                              for c, case in columns) + " |")
        out.append("| --- |" + " ---: |" * len(columns))
        for name in names:
            out.append(f"| `{name}` | " + " | ".join(count(case.get("breakdown", {}).get(name, 0))
                                                    for _, case in columns) + " |")
        out.append("| **total** | " + " | ".join(f"**{count(case['median'])}**" for _, case in columns) + " |")
        out.append("")
    if not out:
        out.append("Not measured yet (`ktls-bench --cases handshake_syscalls`, inside a kernel with kTLS).")
    return "\n".join(out)


def verdict(ok, overlap=False):
    """met, or missed; a miss whose min-max ranges overlap the reference's
    is reported as such: on a busy machine it may be noise."""
    if ok:
        return "met"
    return "**missed** (within the run-to-run range)" if overlap else "**missed**"


def overlaps(case, ref, factor=1.0):
    """The case's best run reaches the reference's worst, scaled by factor."""
    return case["max"] >= factor * ref["min"]


def render_targets(envs):
    rows = ["| target | environment | measured (median ratio) | |", "| --- | --- | --- | --- |"]
    for label, env in envs.items():
        for comparison in env["comparisons"]:
            if comparison["group"] != "bulk_send":
                continue
            cipher = comparison["id"].split(".", 1)[-1]
            ktls_sf = case_of(comparison, "ktls_sendfile")
            ossl_sf = case_of(comparison, "openssl_ktls_sendfile")
            if ktls_sf and ktls_sf["status"] == "ok":
                if ossl_sf and ossl_sf["status"] == "ok":
                    r = ktls_sf["median"] / ossl_sf["median"]
                    rows.append(f"| `SendFile` >= 1.0x `SSL_sendfile`, {cipher} | {label} | {r:.2f}x | "
                                f"{verdict(r >= 1.0, overlaps(ktls_sf, ossl_sf))} |")
                else:
                    rows.append(f"| `SendFile` >= 1.0x `SSL_sendfile`, {cipher} | {label} | OpenSSL has no kTLS for it | n/a |")
                ceiling = case_of(comparison, "af_alg")
                if ktls_sf.get("ratio") is not None:
                    r = ktls_sf["ratio"]
                    rows.append(f"| `SendFile` >= 0.85x AF_ALG, {cipher} | {label} | {r:.2f}x | "
                                f"{verdict(r >= 0.85, overlaps(ktls_sf, ceiling, 0.85))} |")
        for comparison in env["comparisons"]:
            if comparison["group"] == "bulk_receive":
                case = case_of(comparison, "ktls_read")
                if case and case.get("ratio") is not None:
                    cipher = comparison["id"].split(".", 1)[-1]
                    rows.append(f"| receive, RX in the kernel vs OpenSSL (no target), {cipher} | {label} | "
                                f"{case['ratio']:.2f}x | - |")
        for case_id, how in (("ktls_handshake", "ktls's handshake"), ("ktls", "`OffloadSsl` after OpenSSL's")):
            for kind in ("full", "resumed"):
                comparison = find(env, f"handshakes.{kind}")
                case, ref = case_of(comparison, case_id), case_of(comparison, "openssl")
                if case and case.get("ratio") is not None:
                    rows.append(f"| handshakes/s with offload >= 0.95x userspace, {kind}, {how} | {label} | "
                                f"{case['ratio']:.2f}x | {verdict(case['ratio'] >= 0.95, overlaps(case, ref, 0.95))} |")
        for case_id, what in (("ktls", ""), ("ktls_client_cert", ", client certificates"),
                              ("ktls_client_cert_not_kept", ", client certificates not kept")):
            case = case_of(find(env, "idle_memory.heap"), case_id)
            if case and case["status"] == "ok":
                rows.append(f"| <= 1 KiB userspace heap per idle connection, both directions offloaded{what} | "
                            f"{label} | {case['median']:.0f} bytes | {verdict(case['median'] <= 1024)} |")
        for comparison in env["comparisons"]:
            if comparison["group"] != "static_files" or comparison["metric"] != "rps":
                continue
            case, ref = case_of(comparison, "ktls_serve"), case_of(comparison, "nginx")
            if case and case.get("ratio") is not None:
                size = column(comparison).split(",")[0]
                rows.append(f"| `ktls-serve` >= nginx, requests/s, {size} file | {label} | {case['ratio']:.2f}x | "
                            f"{verdict(case['ratio'] >= 1.0, overlaps(case, ref))} |")
        rows.extend(serve_cost_targets(label, env))
        if not any(c["group"] == "static_files" for c in env["comparisons"]):
            rows.append(f"| `ktls-serve` >= nginx, 4 KiB and 16 MiB files | {label} | not measured yet "
                        "(part 5 of issue #7 waits for `ktls-serve`) | - |")
    return "\n".join(rows)


def serve_cost_targets(label, env):
    """Issue #18's targets for ktls-serve, from bench/serve_costs.py."""
    rows = []
    per_request = find(env, "serve_costs.syscalls_per_request")
    for case_id, what, limit in (("ktls_serve", "default flags", 6), ("ktls_serve_cache", "`--open-file-cache`", 4)):
        case = case_of(per_request, case_id)
        if case and case["status"] == "ok":
            rows.append(f"| `ktls-serve` <= {limit} syscalls per keep-alive 4 KiB request, {what} | {label} | "
                        f"{case['median']:.2f} (nginx {case_of(per_request, 'nginx')['median']:.2f}) | "
                        f"{verdict(case['median'] <= limit)} |")
    # The target is for an offloaded connection: where RX stays in OpenSSL
    # by default (6.1, TLS 1.3), the connection keeps its SSL and the row
    # says so; --rx is the offloaded one there.
    idle = find(env, "serve_costs.idle_rss")
    for case_id, what in (("ktls_serve", "default flags"), ("ktls_serve_rx", "`--rx`")):
        case = case_of(idle, case_id)
        if not case or case["status"] != "ok":
            continue
        target = f"| `ktls-serve` <= 2 KiB userspace memory (RSS) per idle keep-alive connection, {what} | {label} |"
        if "rx=kernel" in case.get("notes", ""):
            rows.append(f"{target} {case['median']:,.0f} bytes | {verdict(case['median'] <= 2048)} |")
        else:
            rows.append(f"{target} {case['median']:,.0f} bytes, RX in OpenSSL here (not offloaded) | n/a |")
    return rows


def replace_block(doc, name, body):
    pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.S)
    if not pattern.search(doc):
        sys.exit(f"render_report: the doc has no <!-- generated:{name} --> block")
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), doc)


def draw_charts(envs, chart_dir):
    gnuplot = shutil.which("gnuplot")
    if gnuplot is None:
        sys.exit("render_report: gnuplot is not installed (scripts/setup installs gnuplot-nox)")
    os.makedirs(chart_dir, exist_ok=True)
    for label, env in envs.items():
        comparisons = [c for c in env["comparisons"] if c["group"] == "bulk_send"]
        if not comparisons:
            continue
        with tempfile.NamedTemporaryFile("w", suffix=".dat", delete=False) as data:
            for comparison in comparisons:
                values = []
                for case_id in CHART_CASES:
                    case = case_of(comparison, case_id)
                    if case and case["status"] == "ok":
                        values += [case["median"], case["min"], case["max"]]
                    else:
                        values += [0, 0, 0]
                data.write(comparison["id"].split(".", 1)[-1].replace("_", "-") + " " +
                           " ".join(f"{v:.2f}" for v in values) + "\n")
            data_path = data.name
        plots = ", ".join(
            f"'{data_path}' using {2 + 3 * i}:{3 + 3 * i}:{4 + 3 * i}:xtic(1) title '{CASE_NAMES[c].replace('`', '')}'"
            for i, c in enumerate(CHART_CASES))
        script = f"""
set terminal pngcairo noenhanced size 1100,560 font ',10'
set output '{os.path.join(chart_dir, f'bulk_send-{label}.png')}'
set title "Bulk send, one connection, {env_title(label, env).replace('_', ' ')}: MB/s, median with min-max"
set style data histogram
set style histogram errorbars gap 2 lw 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set key outside right top vertical
set ylabel 'MB/s'
set yrange [0:*]
set grid ytics
plot {plots}
"""
        subprocess.run([gnuplot], input=script, text=True, check=True)
        os.unlink(data_path)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--doc", required=True)
    parser.add_argument("--chart-dir", required=True, help="where the PNGs go (the doc links them relative to itself)")
    parser.add_argument("--machine", help="JSON describing the host (scripts/bench writes it)")
    parser.add_argument("results", nargs="+")
    args = parser.parse_args()

    envs = load(args.results)
    machine = None
    if args.machine:
        with open(args.machine) as f:
            machine = json.load(f)
    draw_charts(envs, args.chart_dir)
    chart_rel = os.path.relpath(args.chart_dir, os.path.dirname(os.path.abspath(args.doc)))
    with open(args.doc) as f:
        doc = f.read()
    doc = replace_block(doc, "conditions", render_conditions(envs, machine))
    doc = replace_block(doc, "targets", render_targets(envs))
    doc = replace_block(doc, "results", render_results(envs, chart_rel))
    doc = replace_block(doc, "handshake_syscalls", render_handshake_syscalls(envs))
    with open(args.doc, "w") as f:
        f.write(doc)


if __name__ == "__main__":
    main()
