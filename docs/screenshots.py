"""Render what users will see, in a real headless browser, and keep screenshots of it in docs/.
Run it from the project (the repo, or a copy with trained runs):

    python docs/screenshots.py plots  [--out docs/dvc_plots.png]
    python docs/screenshots.py plots-template               # .dvc/plots/offline.html, the page `dvc plots show` fills
    python docs/screenshots.py mlflow [--out-dir docs]      # docs/mlflow_{runs,charts,models,home,experiment}.png

plots: `dvc plots show` into a temporary folder, then Debian's chromium (headless) loads the HTML, runs its
Vega-Lite, and the check passes only if every plot on the page drew a chart (a canvas) and none shows a
Vega error. The page carries vega itself (.dvc/plots/offline.html, .dvc/config's plots.html_template): it draws
with no network.

plots-template: that page, DVC's own with the three vega scripts it would load from jsdelivr inlined, in the
versions dvc_render names, fetched from the npm registry once (into ~/.cache/chargpt/npm). Rerun it after a DVC
upgrade.

mlflow: publishes the project's saved view (as `chargpt ui` does), starts `mlflow ui --app-name chargpt` on
127.0.0.1 (a free port) over the project's store, and screenshots, each in a fresh browser profile, the two links
`chargpt ui` prints, the Logged Models view, MLflow's home and the experiment's own page at their plain URLs. The
check passes only if the plain experiment page, in a fresh profile, shows the saved view's test_accuracy column.

Needs: chromium (`apt-get install chromium`), and npm for plots-template.
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repo: its chargpt package; the project is the current directory
CDN = re.compile(r"https://cdn\.jsdelivr\.net/npm/(vega(?:-lite|-embed)?)@([0-9.]+)")
NPM_CACHE = Path.home() / ".cache" / "chargpt" / "npm"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    sys.exit("no chromium on PATH: apt-get install chromium")


def browser(*args: str, timeout: float = 180, budget_ms: int = 20000) -> str:
    # no background networking: on a closed network chromium's own connections are refused, many at a time
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--virtual-time-budget={budget_ms}",
        *args,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        sys.exit(f"chromium failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout


def vega_bundle(package: str, version: str) -> Path:
    """The minified bundle of vega, vega-lite or vega-embed at `version`, fetched from the npm registry once."""
    folder = NPM_CACHE / f"{package}@{version}"
    bundle = folder / "node_modules" / package / "build" / f"{package}.min.js"
    if not bundle.exists():
        folder.mkdir(parents=True, exist_ok=True)
        # --legacy-peer-deps: only the package's own bundle is used, its peers are the other two scripts
        subprocess.run(
            ["npm", "install", "--no-save", "--no-audit", "--no-fund", "--legacy-peer-deps", "--prefix", str(folder),
             f"{package}@{version}"],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
    if not bundle.exists():
        sys.exit(f"npm installed {package}@{version} but {bundle} is missing")
    return bundle


def plots_template(args: argparse.Namespace) -> None:
    """.dvc/plots/offline.html: DVC's page with the vega scripts it loads from jsdelivr inlined, the same versions
    (read from dvc_render), so that `dvc plots show` draws with no network (.dvc/config's plots.html_template)."""
    from dvc_render.html import PAGE_HTML
    from dvc_render.vega import VegaRenderer

    scripts = []
    for package, version in CDN.findall(VegaRenderer.SCRIPTS):
        bundle = vega_bundle(package, version)
        notice = (bundle.parent.parent / "LICENSE").read_text().strip()
        scripts.append(f"<!-- {package}@{version}, from the npm registry. Its license:\n{notice}\n-->\n"
                       f"<script>\n{bundle.read_text()}\n</script>")  # fmt: skip
    if len(scripts) != 3 or any("</script" in s[s.index("<script>") + 8 : -9] for s in scripts):
        sys.exit(f"expected the three vega scripts in dvc_render's page, found {len(scripts)}")
    page = PAGE_HTML.replace("{scripts}", "\n".join(scripts))
    args.out.write_text(page)
    print(f"{args.out}: {len(page):,} bytes ({', '.join(p + '@' + v for p, v in CDN.findall(VegaRenderer.SCRIPTS))})")


def plots(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        shown = subprocess.run(
            [sys.executable, "-m", "dvc", "plots", "show", "--out", tmp], capture_output=True, text=True
        )
        if shown.returncode != 0:
            sys.exit(f"dvc plots show failed: {shown.stderr}")
        page = Path(tmp) / "index.html"
        html = page.read_text()
        if CDN.search(html):
            sys.exit(f"{page} loads vega from jsdelivr: .dvc/config's plots.html_template is not in effect")
        expected = html.count("vegaEmbed(")
        dom = browser("--dump-dom", page.as_uri())
        drawn = len(re.findall(r"<canvas", dom)) + len(re.findall(r'<svg class="marks"', dom))
        shown = re.sub(r"<script\b.*?</script>", "", dom, flags=re.S)  # the page's text, not the vega it carries
        errors = re.findall(r"(?:Error|error):[^<]{0,200}", shown)
        print(f"{page}: {expected} plots on the page, {drawn} drawn by Vega in chromium")
        if expected == 0 or drawn < expected or errors:
            sys.exit(f"the plots did not all render: expected {expected}, drawn {drawn}; errors: {errors[:3]}")
        height = 520 * expected + 200
        args.out.parent.mkdir(parents=True, exist_ok=True)
        browser(f"--screenshot={args.out.resolve()}", f"--window-size=1100,{height}", page.as_uri())
    print(f"screenshot: {args.out}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow(args: argparse.Namespace) -> None:
    """The first screens a user gets from `chargpt ui`: the saved view of the runs table, and its charts."""
    sys.path.insert(0, str(ROOT))
    from chargpt.tracking import compare, ui, view
    from chargpt.tracking import connection as tracking

    root = compare.find_project()
    experiment_id = view.publish_view(root)
    if experiment_id is None:
        sys.exit(f"no runs in {tracking.tracking_uri(root)}")
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--app-name",
            ui.UI_APP,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            tracking.tracking_uri(root),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            sys.exit("mlflow ui did not answer within 60 s")
        args.out_dir.mkdir(parents=True, exist_ok=True)
        pages = [
            (view.view_path(experiment_id, "TABLE"), "mlflow_runs.png"),  # the two links `chargpt ui` prints
            (view.view_path(experiment_id, "CHART"), "mlflow_charts.png"),
            (view.models_path(experiment_id), "mlflow_models.png"),  # MLflow 3's Logged Models view (wide: its metrics)
            ("/", "mlflow_home.png"),  # MLflow's own home, and the experiment a click from it reaches
            (f"/#/experiments/{experiment_id}", "mlflow_experiment.png"),
        ]
        for path, name in pages:
            url = base + path
            browser(
                f"--screenshot={(args.out_dir / name).resolve()}",
                "--window-size=3200,1000" if name == "mlflow_models.png" else "--window-size=1920,1080",
                f"--user-data-dir={tempfile.mkdtemp()}",
                url,
                budget_ms=60000,
            )  # a fresh profile: a new user
            print(f"{url}\nscreenshot: {args.out_dir / name}")
        # a new user's first look at the experiment: the seeded view's columns, not MLflow's defaults
        url = f"{base}/#/experiments/{experiment_id}"
        dom = browser("--dump-dom", f"--user-data-dir={tempfile.mkdtemp()}", url, budget_ms=60000)
        if "test_accuracy" not in dom:  # a column of the view (the experiment's note names test_bpc, not this)
            sys.exit(f"{url}: no test_accuracy column in a fresh browser profile; the chargpt app's seeding failed")
        print(f"{url}: opens on the saved view (its test_accuracy column) in a fresh browser profile")
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("plots", help="check that `dvc plots show` renders, and screenshot it")
    p.add_argument("--out", type=Path, default=Path("docs") / "dvc_plots.png")
    t = sub.add_parser("plots-template", help="write the offline page template for `dvc plots show`")
    t.add_argument("--out", type=Path, default=ROOT / ".dvc" / "plots" / "offline.html")
    m = sub.add_parser("mlflow", help="screenshot the first screens of `chargpt ui` (runs table and charts)")
    m.add_argument("--out-dir", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    {"plots": plots, "plots-template": plots_template, "mlflow": mlflow}[args.what](args)


if __name__ == "__main__":
    main()
