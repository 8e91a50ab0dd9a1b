#!/usr/bin/env python3
"""Checks ops/grafana/tricommit.json against PromQL and a real scrape.

Usage: check_dashboard.py DASHBOARD.json SCRAPE.txt ALLOW_LIST.txt [ALERTS.yml]

1. Every panel (rows included) has at least one target with an expression.
2. Every expression, with Grafana's variables replaced by plain values, is valid
   PromQL: each is checked by `promtool check rules` as a recording rule.
3. Every metric name an expression uses has samples in SCRAPE.txt (a scrape of
   `tricommit-load --metrics-addr`), or is listed in ALLOW_LIST.txt and declared
   (HELP/TYPE) by that scrape; every allow-listed name must itself be declared, except
   `up`, which Prometheus synthesizes.
4. With ALERTS.yml, every `tricommit_*` name its rules use passes the same check (the
   rules' own PromQL is checked by `promtool check rules`).
Exits 1 with one line per problem; 0 when everything holds.
"""

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

# Grafana's built-in and dashboard variables, replaced by values PromQL accepts.
VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${job}": ".*",
    "$job": ".*",
}
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
PROMETHEUS_SYNTHESIZED = {"up"}


def panels_of(dashboard):
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def substitute(expr):
    for variable, value in VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def metric_names(expr):
    """Metric names in an expression: identifiers outside strings, that are followed
    by a selector or a range, or stand alone (not a function, keyword or label)."""
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    # Label lists of by/without/on/ignoring/group_left/group_right are not metrics.
    without_groupings = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", without_strings
    )
    # Label matchers inside braces are not metrics either.
    without_matchers = re.sub(r"\{[^}]*\}", "{}", without_groupings)
    names = set()
    for match in NAME.finditer(without_matchers):
        token = match.group(0)
        rest = without_matchers[match.end():].lstrip()
        if rest.startswith("("):
            continue  # a function call
        if token.startswith("tricommit_") or token in PROMETHEUS_SYNTHESIZED:
            names.add(token)
    return names


def scrape_names(text):
    """(names with samples, names declared by HELP/TYPE, histograms expanded)."""
    sampled, declared = set(), set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            declared.add(name)
            if kind.strip() == "histogram":
                declared.update({name + "_bucket", name + "_sum", name + "_count"})
        elif line and not line.startswith("#"):
            sampled.add(NAME.match(line).group(0))
    return sampled, declared


def check_promql(expressions, problems):
    with tempfile.TemporaryDirectory() as directory:
        for where, expr in expressions:
            rules = {"groups": [{"name": "dashboard", "rules": [
                {"record": "dashboard:check", "expr": substitute(expr)}]}]}
            path = Path(directory) / "rules.json"
            # JSON is YAML: promtool reads it as a rules file.
            path.write_text(json.dumps(rules))
            result = subprocess.run(
                ["promtool", "check", "rules", str(path)],
                capture_output=True, text=True, timeout=60,
            )
            if result.returncode != 0:
                message = (result.stderr or result.stdout).strip().splitlines()
                problems.append(f"{where}: invalid PromQL {expr!r}: {message[-1] if message else ''}")


def main(argv):
    if len(argv) not in (4, 5):
        print(__doc__, file=sys.stderr)
        return 2
    dashboard = json.loads(Path(argv[1]).read_text())
    sampled, declared = scrape_names(Path(argv[2]).read_text())
    allowed = {
        line.strip() for line in Path(argv[3]).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    problems, expressions = [], []
    for panel in panels_of(dashboard):
        if panel.get("type") == "row":
            continue
        where = f"panel {panel.get('id')} {panel.get('title')!r}"
        exprs = [t.get("expr", "") for t in panel.get("targets", []) if t.get("expr")]
        if not exprs:
            problems.append(f"{where}: no query")
        expressions.extend((where, expr) for expr in exprs)
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query or "")
        if match:
            expressions.append((f"variable {variable['name']}", match.group(1)))
    check_promql(expressions, problems)
    used = set()
    for where, expr in expressions:
        for name in metric_names(expr):
            used.add(name)
            if name in sampled:
                continue
            if name in allowed and (name in declared or name in PROMETHEUS_SYNTHESIZED):
                continue
            problems.append(f"{where}: metric {name} is not exported by tricommit-load")
    if len(argv) == 5:
        for number, line in enumerate(Path(argv[4]).read_text().splitlines(), 1):
            if line.lstrip().startswith("#"):
                continue
            for name in re.findall(r"\btricommit_[a-z0-9_]+", line):
                if name in sampled or (name in allowed and name in declared):
                    continue
                problems.append(f"{argv[4]}:{number}: metric {name} is not exported")
    for name in sorted(allowed - PROMETHEUS_SYNTHESIZED):
        if name not in declared:
            problems.append(f"allow-list: {name} is not declared by the scrape")
    for problem in problems:
        print(problem)
    print(f"{len(expressions)} expressions, {len(used)} metric names, "
          f"{len(used & sampled)} with samples, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
