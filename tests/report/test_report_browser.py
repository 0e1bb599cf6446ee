"""The HTML report in a real browser: Debian's chromium driven by selenium (chromium-driver), headless.

Skips with a message when chromium, chromium-driver or selenium is absent (`.ci/run` installs them), so
the README's test command passes on a bare machine. Any console error (a script error, a blocked
resource) fails the test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ttc.cli import main

CHROMIUM = Path("/usr/bin/chromium")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mlp.onnx"


def _driver():
    if not CHROMIUM.is_file():
        pytest.skip("headless browser test: /usr/bin/chromium is absent (apt-get install chromium chromium-driver)")
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not Path(driver_path).is_file():
        pytest.skip("headless browser test: chromedriver is absent (apt-get install chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="headless browser test: selenium is not installed "
                                                                 "(pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
                 "--disable-sync", "--no-first-run", "--metrics-recording-only", "--disable-extensions",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


@pytest.fixture(scope="module")
def browser():
    driver = _driver()
    yield driver
    driver.quit()


def _console_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]


def _load(driver, path: Path) -> dict:
    driver.get(path.resolve().as_uri())
    data = json.loads(driver.find_element("id", "report-data").get_attribute("textContent"))
    errors = _console_errors(driver)
    assert not errors, f"console errors: {errors}"
    return data


def _check_page(driver, path: Path, programs: int, golden: bool) -> None:
    from selenium.webdriver.common.by import By

    data = _load(driver, path)
    assert len(data["programs"]) == programs
    rows = driver.find_elements(By.CSS_SELECTOR, "#programs tbody tr")
    assert len(rows) == programs
    gx, gy = data["device"]["grid"]
    cells = driver.find_elements(By.CSS_SELECTOR, "#grid rect.core")
    assert len(cells) == gx * gy == 108
    assert len(driver.find_elements(By.CSS_SELECTOR, "#memory circle.l1-point")) == programs
    assert len(driver.find_elements(By.CSS_SELECTOR, "#memory circle.dram-point")) == programs
    assert len(driver.find_elements(By.CSS_SELECTOR, "#memory .peak")) == 2
    assert len(driver.find_elements(By.CSS_SELECTOR, "#slowest li")) == min(programs, 10)
    header = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#programs thead th")]
    assert ("PCC" in header) == golden

    def grid_state() -> list[tuple[str, str]]:
        return [(c.get_attribute("fill"), c.get_attribute("data-busy")) for c in cells]

    # Click every row whose cores differ from the selected one: the grid follows, busy = the program's cores.
    selected = int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-selected"))
    changed = 0
    for index, row in enumerate(rows):
        if index == selected:
            continue
        before = grid_state()
        driver.execute_script("arguments[0].scrollIntoView()", row)
        row.click()
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-selected") == str(index)
        assert "selected" in row.get_attribute("class")
        after = grid_state()
        busy = sorted(k for k, (_, b) in enumerate(after) if b == "1")
        assert busy == sorted(data["programs"][index]["core_ids"])
        if data["programs"][index]["core_ids"] != data["programs"][selected]["core_ids"] \
                or data["programs"][index]["utilisation"] != data["programs"][selected]["utilisation"]:
            assert after != before, f"clicking row {index} left the grid as it was"
            changed += 1
        selected = index
        if changed >= 3:
            break
    assert changed >= 1
    assert "program " + str(selected) in driver.find_element(By.ID, "selected-label").text
    assert not _console_errors(driver)


def test_report_mlp_golden_in_chromium(browser, tmp_path):
    out = tmp_path / "mlp.html"
    assert main(["report", str(EXAMPLE), "-o", str(out), "--golden", "-q"]) == 0
    html = out.read_text()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html and "<link" not in html and " src=" not in html
    _check_page(browser, out, 2, golden=True)


def test_report_encoder_in_chromium(browser, tmp_path):
    """A model of many programs on different grids (the zoo's encoder block)."""
    from ttc.zoo import encoder_block, save

    model = tmp_path / "encoder.onnx"
    save(encoder_block(seq=64, hidden=64, heads=2, ffn=128), model)
    out = tmp_path / "encoder.html"
    assert main(["report", str(model), "-o", str(out), "-q"]) == 0
    data = json.loads(out.read_text().split('id="report-data">', 1)[1].split("</script>", 1)[0])
    assert len({tuple(p["core_ids"]) for p in data["programs"]}) > 1
    _check_page(browser, out, len(data["programs"]), golden=False)
