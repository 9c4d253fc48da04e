"""Grafana's expansion of an SQL dashboard query and of a data link, ported (standard library only)
so the stack checks can run exactly what Grafana would send. Anything not ported raises
Unsupported: a dashboard that needs it fails its check instead of being checked approximately.
Used by check_explorer.py (against PostgreSQL), smoke.py (through a running Grafana) and
check_static.py (the links' LogQL through Grafana's grammar).

Versions read: grafana/scenes at tag v8.16.1 (fetched); grafana/grafana and
grafana/grafana-postgresql-datasource through a code index that holds untagged commits only (cited
beside each port): the grafana/grafana repository was too large to fetch, so Grafana 13.2.0's own
copy of this code was not read.
"""
import json
import re
import time
import urllib.parse


class Unsupported(Exception):
    """A construct whose expansion this file does not reproduce, so the dashboard must not use it."""


# Frontend: dashboards are Scenes; a query's variables go through sceneInterpolator. Source:
# grafana/scenes v8.16.1 packages/scenes/src/variables/constants.ts (VARIABLE_REGEX),
# interpolation/sceneInterpolator.ts (an explicit :format wins over the datasource's function),
# interpolation/formatRegistry.ts (sqlStringFormatter, unchanged since 2023-10, #433),
# variants/MultiValueVariable.ts (All without allValue = every option's value, [] when none),
# variants/CustomVariable.tsx (options split on unescaped commas). Which @grafana/scenes Grafana
# 13.2.0 bundles was not read (its package.json at the tag was not available).
VARIABLE_REGEX = re.compile(r"""\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)((?:\.[^:^{}\[\]]+|\["[^"]*"\]|\['[^']*'\]|\[[^\]"']*\])*)(?::([^}]+))?\}""",
                            re.ASCII)
# Names the Scenes macro index resolves itself (variables/macros/index.ts): not for SQL here.
SCENES_MACROS = {"__all_variables", "__url_time_range", "__value", "__data", "__series", "__field", "__url",
                 "__from", "__to", "__timezone", "__user", "__org", "__interval", "__interval_ms"}


def sqlstring(value):
    """formatRegistry.ts sqlStringFormatter: each value quoted, ' doubled, " -> \\", joined by ','."""
    esc = lambda v: "'" + re.sub(r"""['"]""", lambda m: {"'": "''", '"': '\\"'}[m.group(0)], str(v)) + "'"
    return ",".join(esc(v) for v in value) if isinstance(value, list) else esc(value)


def frontend(sql, values):
    """Dashboard variables, as sceneInterpolator expands them. Only ${var:sqlstring} is allowed: the
    default SQL formatting of a single string differs between Grafana's in-tree SqlDatasource
    (packages/grafana-sql/src/datasource/SqlDatasource.ts: quoted when multi/includeAll) and the
    external plugin (grafana-postgresql-datasource src/datasource.ts 07a14fd: never quoted)."""
    def sub(m):
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6)
        if name in values:
            if fmt != "sqlstring":
                raise Unsupported(f"{m.group(0)}: write ${{{name}:sqlstring}} (same expansion in every Grafana version)")
            return sqlstring(values[name])
        if name in SCENES_MACROS:
            raise Unsupported(f"{m.group(0)}: a Scenes macro, not reproduced here")
        return m.group(0)  # not a variable: left for the backend, as Scenes does
    return VARIABLE_REGEX.sub(sub, sql)


# Backend: sqleng's global Interpolate, then the PostgreSQL macro engine. Source: grafana/grafana
# pkg/tsdb/grafana-postgresql-datasource/macros.go (0577088, 02ab314) and the external plugin's
# pkg/postgresql/macros.go (566b178), identical for the macros below: `\$([_a-zA-Z0-9]+)\(([^)]*)\)`,
# args split on ',' and trimmed; __timeFilter(c) = "c BETWEEN '<from>' AND '<to>'",
# __timeFrom() / __timeTo() = "'<t>'", t = time.UTC().Format(time.RFC3339Nano).
MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^)]*)\)")
GLOBAL = ("$__interval_ms", "$__interval", "$__unixEpochFrom()", "$__unixEpochTo()")  # sqleng Interpolate


def rfc3339nano(ms):
    """Go's time.RFC3339Nano of a UTC instant (trailing zeros of the fraction dropped, then the dot)."""
    s, frac = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + f".{frac:03d}".rstrip("0").rstrip(".") + "Z"


def backend(sql, t_from, t_to):
    if "--" in sql or "/*" in sql:  # the plugin strips comments before the macros, the in-tree engine not
        raise Unsupported("an SQL comment: newer engines strip comments before expanding macros, older ones do not")
    if any(g in sql for g in GLOBAL):
        raise Unsupported(f"one of {GLOBAL}: not reproduced here")

    def macro(m):
        name, args = m.group(1), [a.strip() for a in m.group(2).split(",")]
        if name == "__timeFilter" and args[0]:
            return f"{args[0]} BETWEEN '{rfc3339nano(t_from)}' AND '{rfc3339nano(t_to)}'"
        if name in ("__timeFrom", "__timeTo"):
            return f"'{rfc3339nano(t_from if name == '__timeFrom' else t_to)}'"
        raise Unsupported(f"macro {m.group(0)}: not reproduced here")
    out = MACRO.sub(macro, sql)
    if "$" in out:
        raise Unsupported(f"a $ is left after expansion: {out[out.index('$'):][:40]!r}")
    return out


def time_range(dash, now_ms):
    """The dashboard's default range; only `now-<N><s|m|h|d>` .. `now`."""
    t = dash["time"]
    m = re.fullmatch(r"now-(\d+)([smhd])", t["from"])
    if not m or t["to"] != "now":
        raise Unsupported(f"time range {t}")
    return now_ms - int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)] * 1000, now_ms


# Data links, as Grafana builds them and Explore reads them.
def render_link(url, value, t_from, t_to, api_url):
    """packages/grafana-data/src/field/fieldOverrides.ts getLinksSupplier: replaceVariables(href, …,
    VariableFormatID.UriEncode); ${__value.raw} = the cell's raw value (scenes macros/dataMacros.ts),
    ${__from}/${__to} = the range in epoch ms (timeMacros.ts). Every value here is URI-safe."""
    vals = {"${__value.raw}": value, "${__from}": str(t_from), "${__to}": str(t_to), "${api_url}": api_url}
    out = re.sub(r"\$\{[^}]+\}", lambda m: urllib.parse.quote(vals[m.group(0)], safe=";,/?:@&=+$-_.~#")
                 if m.group(0) in vals else m.group(0), url)
    if "${" in out:
        raise Unsupported(f"link placeholder not reproduced here: {out[out.index('${'):][:30]}")
    return out


def explore_pane(href):
    """The one pane of an /explore link: grafana-data utils/url.ts parseKeyValue ('+' is a space,
    then decodeURIComponent), then JSON.parse of `panes` (features/explore/.../migrators/v1.ts)."""
    path, _, query = href.partition("?")
    params = {}
    for kv in query.split("&"):
        k, _, v = kv.replace("+", "%20").partition("=")
        params[urllib.parse.unquote(k)] = urllib.parse.unquote(v)
    if path != "/explore" or params.get("schemaVersion") != "1":
        raise ValueError(f"not an Explore schemaVersion=1 URL: {href[:80]}")
    panes = json.loads(params["panes"])
    (pane,) = panes.values()
    return pane


def custom_options(query):
    """A custom variable's options: split on unescaped commas, trimmed (scenes CustomVariable.tsx)."""
    return [t.replace("\\,", ",").strip() for t in re.findall(r"(?:\\,|[^,])+", query)]
