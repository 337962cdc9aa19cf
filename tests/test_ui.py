"""The MLflow UI in a real browser: a tiny sweep's store served by `mlflow ui` (as `make ui` does) on a free
loopback port, driven in headless Chromium with Selenium. Checks that the sweep's children are listed with their
model and precision, opens the compare view for the two children, and saves screenshots of both pages
(to $SLT_HYDRA_SCREENSHOTS, else the test's tmp folder).

Needs Debian's chromium and chromium-driver (`make browser`). Without them the tests skip, unless
SLT_HYDRA_REQUIRE_BROWSER=1 (set by .ci/run), where they fail.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import run_app, tiny_args

pytestmark = pytest.mark.ui

WAIT = 120  # seconds an element may take to appear: the React app fetches runs after a cold start
SERVER_START = 240  # seconds `mlflow ui` may take to answer on a busy 2-core machine (~15 s alone)
MODEL_NAME = "tiny-llama"
RUN_NAME = "attributes.`Run Name`"  # column ids of the runs table (ag-grid col-id)
EXPECTED = {"quant=none": "float32", "quant=8bit": "8bit"}  # child run name -> precision tag
CHROME_FLAGS = [  # headless, and no background calls to Google (refused on a closed network)
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,900",
]


def browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver), or skip (fail when SLT_HYDRA_REQUIRE_BROWSER=1) saying how to install them."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromedriver", driver)) if path is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (`make setup`)")
    if missing:
        reason = (f"browser test needs {', '.join(missing)}: "
                  "install with `make browser` (Debian: chromium chromium-driver)")
        if os.environ.get("SLT_HYDRA_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return chromium, driver


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"mlflow ui exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"mlflow ui did not answer on {url} within {SERVER_START}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def ui(request, tmp_path_factory):
    """A real two-job sweep (quant=none,8bit, evaluation only) in a fresh store, served by `mlflow ui`.

    Yields (base URL, experiment id, parent run, {child run name: child run})."""
    browser_paths()  # skip before building anything when there is no browser
    tiny_model = request.getfixturevalue("tiny_model")
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("ui_store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # create the tables now, so server and sweep never both migrate
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / "mlflow_ui.log"
    # No telemetry calls out; no GenAI job runner (seven more mlflow processes, not needed to browse runs).
    env = {**os.environ, "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("w") as out:  # the command of `make ui`, with one worker instead of four: it starts faster
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", uri,
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        # The sweep runs while the server starts. Children are named by the swept key alone (quant=...).
        fixed = tiny_args(tiny_model, "eval.only=true", f"model.name={MODEL_NAME}", "sweep.name=ui_demo")
        result = run_app(["--multirun", *fixed, "quant=none,8bit"], folder)
        assert result.returncode == 0, result.stderr[-3000:]
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("slt_hydra")
        runs = client.search_runs([experiment.experiment_id])
        (parent,) = [r for r in runs if r.data.tags.get("slt.role") == "sweep"]
        children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
        # What the browser must show, as the store holds it.
        assert {name: r.data.tags["precision"] for name, r in children.items()} == EXPECTED
        assert {r.data.tags["model"] for r in children.values()} == {MODEL_NAME}
        wait_until_up(url, server, log)
        yield url, experiment.experiment_id, parent, children
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the mlflow CLI and its uvicorn child
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(scope="module")
def browser(ui, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium  # explicit paths: Selenium Manager downloads nothing
    for flag in [*CHROME_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def shots(tmp_path) -> Path:
    folder = Path(os.environ.get("SLT_HYDRA_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def screenshot(driver, path: Path) -> None:
    assert driver.save_screenshot(str(path)), path
    print(f"screenshot: {path}")


def wait(driver):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT)


def visible(driver, css: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    return wait(driver).until(ec.visibility_of_element_located((By.CSS_SELECTOR, css)))


def open_runs_table(driver, url: str, experiment_id: str, parent, children) -> None:
    """The experiment's runs table with the parent row expanded, so its children are listed."""
    from selenium.webdriver.common.by import By

    driver.get(f"{url}/#/experiments/{experiment_id}/runs")
    left = ".ag-pinned-left-cols-container"  # the pinned Run Name column; other cells are in the centre
    visible(driver, f'{left} [row-id="{parent.info.run_id}"]')
    for close in driver.find_elements(By.CSS_SELECTOR, '[data-component-id="mlflow.assistant.chat_panel.close"]'):
        close.click()  # the assistant side panel opens on a first visit and hides half of the table
    first_child = f'{left} [row-id="{next(iter(children.values())).info.run_id}"]'
    if not driver.find_elements(By.CSS_SELECTOR, first_child):  # nested runs start collapsed under the parent
        driver.find_element(By.CSS_SELECTOR, f'{left} [row-id="{parent.info.run_id}"] button').click()
    visible(driver, first_child)


def cell(driver, run_id: str, column: str) -> str:
    from selenium.webdriver.common.by import By

    css = f'[row-id="{run_id}"] [col-id="{column}"]'
    if column == RUN_NAME:  # the name is the link; the cell also holds the run's colour swatch
        css += " a"
    return driver.find_element(By.CSS_SELECTOR, css).text.strip()


def choose_columns(driver, show: list[str], hide: list[str]) -> None:
    """Tick and untick columns in the table's Columns menu, by their name there (tags and metrics by key)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    visible(driver, 'button[data-testid="column-selection-dropdown"]').click()
    visible(driver, '[data-component-id="mlflow.experiment_page.runs_table.column_selector"]')
    for name, wanted in [*((n, True) for n in show), *((n, False) for n in hide)]:
        box = driver.find_element(By.XPATH, "//*[@data-component-id='mlflow.experiment_page.runs_table.column_"
                                            f"selector']//span[@title='{name}']/preceding-sibling::span"
                                            "[contains(@class, 'tree-checkbox')]")
        if ("tree-checkbox-checked" in (box.get_attribute("class") or "")) != wanted:
            box.click()
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)


def position(element, side: str) -> float:
    """An absolutely placed grid cell's `top` or `left`, in px."""
    return float(re.search(rf"{side}: ([\d.]+)px", element.get_attribute("style")).group(1))


def test_the_runs_table_lists_the_sweep_children_with_model_and_precision(ui, browser, shots):
    url, experiment_id, parent, children = ui
    open_runs_table(browser, url, experiment_id, parent, children)
    # The tags next to the run names (and a score); the default Dataset/Source/Models columns would push them
    # out of the screenshot.
    choose_columns(browser, show=["model", "precision", "test_chrf"], hide=["Dataset", "Source", "Models"])
    last = next(reversed(children.values())).info.run_id
    wait(browser).until(lambda d: cell(d, last, "tags.`precision`") not in ("", "-"))
    listed = {cell(browser, r.info.run_id, RUN_NAME):
              (cell(browser, r.info.run_id, "tags.`model`"), cell(browser, r.info.run_id, "tags.`precision`"))
              for r in children.values()}
    assert listed == {name: (MODEL_NAME, precision) for name, precision in EXPECTED.items()}
    assert cell(browser, parent.info.run_id, RUN_NAME) == "ui_demo"
    screenshot(browser, shots / "mlflow_runs.png")


def test_the_compare_view_shows_both_children_and_their_metrics(ui, browser, shots):
    from selenium.webdriver.common.by import By

    url, experiment_id, parent, children = ui
    open_runs_table(browser, url, experiment_id, parent, children)
    for run in children.values():  # tick both children, then the toolbar's Compare button
        browser.find_element(By.CSS_SELECTOR, f'.ag-pinned-left-cols-container [row-id="{run.info.run_id}"] '
                                              'input[type="checkbox"]').click()
    wait(browser).until(lambda d: d.find_element(By.XPATH, "//button[normalize-space()='Compare']")).click()
    wait(browser).until(lambda d: "/compare-runs" in d.current_url)

    table = visible(browser, "table.mlflow-compare-run-table")
    run_ids = [a.text.strip() for a in table.find_elements(By.CSS_SELECTOR, "thead a")]
    names = [td.text.strip() for td in table.find_elements(By.CSS_SELECTOR, "tbody tr:first-child td")]
    by_id = {r.info.run_id: r for r in children.values()}
    assert sorted(run_ids) == sorted(by_id)
    assert names == [by_id[i].info.run_name for i in run_ids]

    for section in ["Parameters", "Metrics", "Tags"]:  # only what differs between the two runs
        browser.find_element(By.CSS_SELECTOR, f'button[aria-label="{section} - Show diff only"]').click()
    box = browser.find_element(By.XPATH, "//button[@aria-label='Metrics - Show diff only']"
                                         "/ancestor::div[contains(@class, 'collapse-content-box')]")
    wait(browser).until(lambda d: "model_memory_gb" in box.text)  # int8 weights: smaller in 8bit, always differs
    # Two virtualised grids: metric names on the left, one value per run on the right, rows aligned by `top`.
    name_grid, value_grid = box.find_elements(By.CSS_SELECTOR, ".ReactVirtualized__Grid__innerScrollContainer")
    metric_at = {position(row, "top"): row.text.strip() for row in name_grid.find_elements(By.XPATH, "./div")}
    shown: dict[str, list[float]] = {}
    for value in sorted(value_grid.find_elements(By.XPATH, "./div"), key=lambda v: position(v, "left")):
        shown.setdefault(metric_at[position(value, "top")], []).append(float(value.text))
    assert "model_memory_gb" in shown
    for metric, values in shown.items():  # each value is the run's, as rounded by the UI (3-4 digits)
        stored = [by_id[i].data.metrics[metric] for i in run_ids]
        assert len(values) == 2 and all(math.isclose(a, b, rel_tol=1e-3, abs_tol=6e-4)
                                        for a, b in zip(values, stored)), (metric, values, stored)

    details = browser.find_element(By.XPATH, "//*[normalize-space(text())='Run details']")
    browser.set_window_size(1400, 1150)  # run names, the differing parameters and the metrics in one shot
    browser.execute_script("arguments[0].scrollIntoView()", details)
    screenshot(browser, shots / "mlflow_compare.png")
