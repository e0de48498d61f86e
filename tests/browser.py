"""JupyterLab in headless Chromium, for tests/test_browser.py: find the browser, start a server, open a
notebook, run it, save it, find its interactive views and move their controls.

The page is asked about its state through ``window.jupyterapp`` (the server runs with
``--LabApp.expose_app_in_browser``) rather than through menus, whose markup changes between JupyterLab
versions; the views' controls are used as a reader uses them (choose an option, type a number, press a key).

Nothing here imports selenium at import time: the root conftest.py asks ``enabled()`` while collecting.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

APT = "apt-get install chromium chromium-driver"
PIP = "pip install 'selenium>=4.10'"
# the browser window's height in px (widths are the tests' parameter): tall enough to show a whole view at once,
# for its picture (the notebook scrolls inside the page, and an element's picture stops at its visible part)
HEIGHT = 1800


# ----------------------------------------------------------------------------- is there a browser?

def browser_paths() -> tuple[str | None, str | None]:
    """(chromium, chromedriver) as found on PATH."""
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    return chromium, shutil.which("chromedriver")


def missing() -> list[str]:
    """What the browser test needs and this machine lacks."""
    found = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        found.append("selenium")
    chromium, driver = browser_paths()
    found += [name for name, path in (("chromium", chromium), ("chromedriver", driver)) if path is None]
    return found


def install_hint(pieces: list[str]) -> str:
    """How to install what ``missing()`` lists."""
    return "; ".join(([APT] if {"chromium", "chromedriver"} & set(pieces) else [])
                     + ([PIP] if "selenium" in pieces else []))


def required() -> bool:
    """CI sets ``SDD_EDU_BROWSER=1``: there a missing browser fails the test instead of skipping it."""
    return os.environ.get("SDD_EDU_BROWSER", "") not in ("", "0")


def enabled() -> bool:
    """Whether tests/test_browser.py runs the notebooks (else it skips, and nbval runs them)."""
    return required() or not missing()


# ----------------------------------------------------------------------------- the server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server on 127.0.0.1 (a free port, a random token) serving ``root``; its kernels run in
    quick mode.  Its settings, workspaces and runtime files live in ``home``, not in the user's."""

    def __init__(self, root: Path, home: Path):
        self.root, self.home = Path(root), Path(home)
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.log = self.home / "jupyterlab.log"
        self.process: subprocess.Popen | None = None
        # straight to 127.0.0.1, whatever proxy the environment names
        self.http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def url(self, path: str = "lab") -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def start(self, timeout: float = 120) -> "Lab":
        settings = self.home / "settings"
        # no news and no update check: they would fetch from the internet, and their pop-up covers the page
        notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        notification.parent.mkdir(parents=True, exist_ok=True)
        notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        env = dict(os.environ, SDD_EDU_QUICK="1", JUPYTERLAB_SETTINGS_DIR=str(settings),
                   JUPYTERLAB_WORKSPACES_DIR=str(self.home / "workspaces"),
                   JUPYTER_RUNTIME_DIR=str(self.home / "runtime"), JUPYTER_CONFIG_DIR=str(self.home / "config"))
        command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                   f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
                   f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
                   "--LabApp.expose_app_in_browser=True"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")  # containers and CI machines run as root
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, env=env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with self.http.open(self.url("api/status"), timeout=5) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def kernels(self) -> list[dict]:
        """The kernels the server runs."""
        with self.http.open(self.url("api/kernels"), timeout=10) as reply:
            return json.load(reply)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # the server shuts its kernels down
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


# ----------------------------------------------------------------------------- the browser

def chrome():
    """Headless Chromium with the console's messages kept (``driver.get_log('browser')``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size=1280,{HEIGHT}",
                "--force-device-scale-factor=1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # both paths given: selenium does not go looking for (or downloading) a driver
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(120)
    driver.set_script_timeout(120)
    return driver


def set_size(driver, width: int, height: int = HEIGHT) -> None:
    """Make the page (not the window, which may have borders) ``width`` px wide, the window ``height`` px high."""
    driver.set_window_size(width, height)
    inner = driver.execute_script("return window.innerWidth")
    if inner != width:
        driver.set_window_size(2 * width - inner, height)
    assert driver.execute_script("return window.innerWidth") == width


def wait_for(condition, timeout: float, what: str, interval: float = 0.5):
    """Poll ``condition()`` until it returns something true; return that, or raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s")
        time.sleep(interval)


# JavaScript run in the page: `panel` is the notebook in the main area, the one the test opened.
PANEL = "const app = window.jupyterapp; const panel = app && app.shell.currentWidget;"


def notebook_state(driver) -> dict | None:
    """The open notebook's path, whether it is loaded, its kernel's status and whether it is marked modified."""
    return driver.execute_script(PANEL + """
        if (!panel || !panel.context || !panel.sessionContext) return null;
        return {path: panel.context.path, ready: panel.context.isReady, dirty: panel.context.model.dirty,
                kernel: panel.sessionContext.kernelDisplayStatus,
                tab_dirty: panel.title.className.includes('jp-mod-dirty')};""")


def open_notebook(driver, lab: Lab, name: str, timeout: float = 180) -> dict:
    """Open ``name`` alone in the main area, wait for its kernel to be started and idle; return its state.

    JupyterLab is loaded once (a fresh workspace) and each notebook opened in it after the previous one was
    closed: loading the page again would cost seconds per notebook."""
    if not driver.execute_script("return !!(window.jupyterapp && window.jupyterapp.shell)"):
        driver.get(lab.url("lab") + "&reset")
        wait_for(lambda: driver.execute_script("return !!(window.jupyterapp && window.jupyterapp.shell)"), timeout,
                 "JupyterLab loaded")
    driver.execute_async_script("""
        const [path, done] = [arguments[0], arguments[arguments.length - 1]], app = window.jupyterapp;
        app.restored.then(() => { app.shell.closeAll(); return app.commands.execute('docmanager:open', {path}); })
           .then(() => done(null), e => done(String(e)));""", name)

    def idle():
        state = notebook_state(driver)
        return state if state and state["path"] == name and state["ready"] and state["kernel"] == "idle" else None

    wait_for(idle, timeout, f"{name}: the notebook loaded and its kernel idle")
    # the notebook takes language_info from the kernel's info and kernelspec from its spec, each when it
    # arrives (after the kernel reports idle): wait for both, and a moment for the model to take them in
    driver.execute_async_script(PANEL + """
        const done = arguments[arguments.length - 1], kernel = panel.sessionContext.session.kernel;
        Promise.all([kernel.info, kernel.spec]).then(() => done(true), () => done(false));""")
    time.sleep(0.5)
    return notebook_state(driver)


def notebook_in_page(driver) -> dict:
    """The notebook as the page holds it: metadata, nbformat, nbformat_minor, and the cells' ids (not the cells)."""
    return driver.execute_script(PANEL + """
        const nb = panel.context.model.toJSON();
        nb.cell_ids = nb.cells.map(cell => cell.id); delete nb.cells; return nb;""")


def run_all(driver, timeout: float) -> dict:
    """Run All and wait until every cell has run (or one failed); ``{"ok": bool}`` or ``{"error": ...}``."""
    driver.execute_script(PANEL + """
        window.sddRunAll = null;
        app.commands.execute('notebook:run-all-cells').then(
            ok => { window.sddRunAll = {ok: ok}; }, e => { window.sddRunAll = {error: String(e)}; });""")
    result = wait_for(lambda: driver.execute_script("return window.sddRunAll"), timeout, "Run All finished", 1)
    wait_for(lambda: notebook_state(driver)["kernel"] == "idle", 60, "the kernel idle after Run All")
    return result


def save(driver) -> None:
    error = driver.execute_async_script(PANEL + """
        const done = arguments[arguments.length - 1];
        app.commands.execute('docmanager:save').then(() => done(null), e => done(String(e)));""")
    assert error is None, f"saving failed: {error}"
    wait_for(lambda: not notebook_state(driver)["dirty"], 30, "the notebook saved")


def close_notebook(driver) -> None:
    """Shut the kernel down (each holds the models; the next notebook need not wait for it to go) and forget
    unsaved changes, so that leaving the page asks nothing."""
    driver.execute_script(PANEL + """
        if (!panel || !panel.sessionContext) return;
        panel.context.model.dirty = false;
        panel.sessionContext.shutdown().catch(() => null);""")


# ----------------------------------------------------------------------------- interactive views

def views(driver) -> list:
    """The interactive views on the page: the outermost widget boxes that hold a plotly figure."""
    return driver.execute_script(PANEL + """
        return Array.from(panel.node.querySelectorAll('.widget-vbox')).filter(
            box => box.querySelector('.js-plotly-plot') && !box.parentElement.closest('.widget-vbox'));""")


def figure_fit(driver, view) -> dict:
    """The right edges (px) of the view's figure (its plot, svg container and svg layers, whichever reaches
    furthest) and of the output area of the cell that shows it; how far a title runs past the figure's edges
    (plotly cuts it there)."""
    return driver.execute_script("""
        const view = arguments[0];
        view.scrollIntoView({block: 'start'});
        const plot = view.querySelector('.js-plotly-plot');
        const parts = [plot, ...plot.querySelectorAll('.svg-container, .main-svg')];
        const area = view.closest('.jp-Cell').querySelector('.jp-Cell-outputArea');
        // the figure's title, its panel titles and axis titles: how far the furthest runs past the figure's edges
        const box = plot.getBoundingClientRect();
        const titles = plot.querySelectorAll('.gtitle, .annotation-text, .g-xtitle text, .g-x2title text');
        const outside = Array.from(titles).map(t => t.getBoundingClientRect()).filter(r => r.width > 0)
            .map(r => Math.max(box.left - r.left, r.right - box.right, 0));
        return {figure: Math.max(...parts.map(e => e.getBoundingClientRect().right)),
                titles_outside: Math.max(0, ...outside),
                figure_width: plot.getBoundingClientRect().width, figure_height: plot.getBoundingClientRect().height,
                area: area.getBoundingClientRect().right, area_width: area.getBoundingClientRect().width,
                overflow: view.scrollWidth - view.clientWidth};  // > 0: a horizontal scrollbar under the view""",
                                 view)


def settled_fit(driver, view, timeout: float = 15) -> dict:
    """``figure_fit`` once the figure has stopped changing size (JupyterLab and plotly relayout after a resize)."""
    last = {}

    def stable():
        nonlocal last
        now = figure_fit(driver, view)
        same, last = now == last, now
        return now if same else None

    return wait_for(stable, timeout, "the figure's size settled", 0.4)


def screenshot(driver, view, path: Path) -> None:
    """A picture of the view (as much of it as the window's height shows)."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", view)
    time.sleep(0.3)
    view.screenshot(str(path))


def figure_state(driver, view) -> str | None:
    """What the view's figure shows (its traces and title) as JSON; None while it is being redrawn."""
    return driver.execute_script("""
        const plot = arguments[0].querySelector('.js-plotly-plot');
        if (!plot || !plot.data || !plot.layout) return null;
        // typed arrays as lists; uid is plotly's own bookkeeping, not what the figure shows
        return JSON.stringify({data: plot.data, title: plot.layout.title},
                              (k, v) => k === 'uid' ? undefined : ArrayBuffer.isView(v) ? Array.from(v) : v);""",
                                 view)


def view_message(driver, view) -> str:
    """The view's text: a failed redraw shows its error there, after a warning sign."""
    return driver.execute_script("return arguments[0].innerText", view)


def control(driver, view, label: str):
    """The control (an ipywidgets element) whose label reads ``label``."""
    found = driver.execute_script("""
        for (const l of arguments[0].querySelectorAll('.widget-label'))
            if (l.textContent.trim() === arguments[1]) return l.closest('.jupyter-widgets');
        return null;""", view, label)
    assert found is not None, f"no control labelled {label!r} in the view"
    return found


def move(driver, view, label: str, value) -> str:
    """Use the control labelled ``label`` as a reader would, to set it to ``value``; say what was done.

    A drop-down: choose the option ``value``.  A list of several choices: click ``value``, which chooses
    it alone.  A number field: type ``value`` and press Enter.  A slider: press the arrow
    keys on its handle until it reads ``value``.  Toggle buttons: click the one that reads ``value``."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.select import Select

    el = control(driver, view, label)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", el)
    selects = el.find_elements(By.TAG_NAME, "select")
    numbers = el.find_elements(By.CSS_SELECTOR, "input[type=number]")
    handles = el.find_elements(By.CSS_SELECTOR, ".noUi-handle")
    buttons = el.find_elements(By.TAG_NAME, "button")
    if selects and selects[0].get_attribute("multiple"):
        option = next(o for o in Select(selects[0]).options if o.get_attribute("value") == value)
        ActionChains(driver).click(option).perform()  # a click without Ctrl or Shift: this one alone
        return f"{label}: clicked {value!r} (alone)"
    if selects:
        Select(selects[0]).select_by_value(value)
        return f"{label}: chose {value!r}"
    if numbers:
        numbers[0].send_keys(Keys.CONTROL, "a")
        numbers[0].send_keys(str(value), Keys.ENTER)
        return f"{label}: typed {value}"
    if handles:
        now = int(float(handles[0].get_attribute("aria-valuenow")))
        key = Keys.ARROW_RIGHT if value > now else Keys.ARROW_LEFT
        for _ in range(abs(value - now)):
            handles[0].send_keys(key)
        return f"{label}: moved from {now} to {value}"
    if buttons:
        next(b for b in buttons if b.text.strip() == value).click()
        return f"{label}: clicked {value!r}"
    raise AssertionError(f"the control {label!r} is none the test knows how to use")


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)
