"""The web page in a real headless Chromium (selenium) against a real ``opengem serve``.

One server for the module (a subprocess on a free loopback port, auth on, one
worker) and one browser. The tests compose queries the way a person does (typing
into the autocomplete, picking from menus, uploading a file), run them through the
job API and check what the page shows and what its downloads hold. Screenshots go
to ``test-artifacts/browser/`` (``OPENGEM_TEST_ARTIFACTS`` to move it; git-ignored).

Needs the Debian packages ``chromium`` and ``chromium-driver`` (``.ci/run`` installs
them when it can; ``OPENGEM_CHROMIUM`` / ``OPENGEM_CHROMEDRIVER`` point elsewhere);
skipped with the reason when either is missing. Deselect with ``-m "not browser"``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from opengem.contract import get_example_query
from opengem.ontology import default_gene_space
from opengem.server.keys import create_key
from opengem.server.store import open_store
from opengem.server.testing import ServerProcess, bundle_available, start_server

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("OPENGEM_TEST_ARTIFACTS", REPO / "test-artifacts")) / "browser"
WIDTH, HEIGHT = 1280, 800

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not bundle_available("gem-1-bulk"), reason="no gem-1-bulk bundle (set OPENGEM_MODELS)"
    ),
]


def _find(env: str, names: tuple[str, ...]) -> str | None:
    if os.environ.get(env):
        return os.environ[env] if Path(os.environ[env]).is_file() else None
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


CHROMIUM = _find("OPENGEM_CHROMIUM", ("chromium", "chromium-browser", "google-chrome"))
CHROMEDRIVER = _find("OPENGEM_CHROMEDRIVER", ("chromedriver",))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    data = tmp_path_factory.mktemp("ui-server") / "data"
    store = open_store(data, "")
    key = create_key(store, "browser tests")
    store.close()
    process = start_server(data, workers=1, auth=True, env={"OPENGEM_DATABASE_URL": ""})
    try:
        yield process, key
    finally:
        process.stop()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def driver(downloads: Path) -> Iterator[Any]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        missing = "chromium" if CHROMIUM is None else "chromedriver"
        pytest.skip(
            f"no {missing} found (apt-get install chromium chromium-driver, or set "
            "OPENGEM_CHROMIUM / OPENGEM_CHROMEDRIVER)"
        )
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')"
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={WIDTH},{HEIGHT}",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    # the viewport itself is 1280×800 (a window of that size leaves less to the page)
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield browser
    finally:
        browser.quit()


class Page:
    """The page in the browser, with the few moves the tests make."""

    def __init__(self, driver: Any, url: str) -> None:
        from selenium.webdriver.common.by import By

        self.d = driver
        self.url = url
        self.By = By

    def wait(self, condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = condition()
            except Exception:  # the element is not there yet / went stale
                value = None
            if value:
                return value
            time.sleep(0.05)
        self.shot(f"timeout-{what.replace(' ', '-')}")
        raise AssertionError(
            f"timed out waiting for {what}; status {self.text('#run-status')!r}, problems "
            f"{self.text('#p-general')!r}, browser log {self.d.get_log('browser')[-5:]}"
        )

    def one(self, css: str, root: Any = None) -> Any:
        return (root or self.d).find_element(self.By.CSS_SELECTOR, css)

    def all(self, css: str, root: Any = None) -> list[Any]:
        return list((root or self.d).find_elements(self.By.CSS_SELECTOR, css))

    def text(self, css: str) -> str:
        found = self.all(css)
        return str(found[0].get_attribute("textContent")) if found else ""

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.d.save_screenshot(str(path))
        return path

    def open(self, key: str, model_id: str = "gem-1-bulk") -> None:
        self.d.get(f"{self.url}/?model={model_id}")
        self.wait(lambda: self.one("body").get_attribute("data-ready") == "true", "page ready")
        box = self.one("#api-key")
        assert box.is_displayed(), "auth is on: the API key field must show"
        box.clear()
        box.send_keys(key, "\t")  # change → the vocabulary and example load
        self.wait(
            lambda: self.one("body").get_attribute("data-loaded") == model_id,
            "the model's vocabulary and example",
        )

    def condition(self, i: int) -> Any:
        return self.all(".condition")[i]

    def field(self, card: Any, name: str) -> Any:
        return self.one(f'[data-field="{name}"]', card)

    def pick(self, card: Any, name: str, typed: str, value: str) -> None:
        """Type into an ontology field's autocomplete and choose ``value`` by keyboard."""
        from selenium.webdriver.common.keys import Keys

        box = self.one("input", self.field(card, name))
        box.clear()
        box.send_keys(typed)
        option = self.wait(
            lambda: next(
                (o for o in self.all("[role=option]", self.field(card, name)) if value in o.text),
                None,
            ),
            f"option {value}",
        )
        options = self.all("[role=option]", self.field(card, name))
        for _ in range(options.index(option) + 1):
            box.send_keys(Keys.ARROW_DOWN)
        box.send_keys(Keys.ENTER)
        assert box.get_attribute("value") == value

    def choose(self, card: Any, name: str, value: str) -> None:
        from selenium.webdriver.support.ui import Select

        Select(self.one("select", self.field(card, name))).select_by_value(value)

    def type(self, element: Any, text: str) -> None:
        element.clear()
        element.send_keys(text)

    def run(self) -> None:
        self.one("#run").click()
        outcome = self.wait(
            lambda: (
                self.one("#run-status").get_attribute("class") in ("ready", "failed")
                and self.one("#run-status").get_attribute("class")
            ),
            "the result",
            timeout=60,
        )
        assert outcome == "ready", (
            f"{self.text('#run-status')}: {self.text('#p-general')} {self.text('.problem')}"
        )

    def no_horizontal_overflow(self) -> None:
        width = self.d.execute_script("return document.documentElement.scrollWidth")
        inner = self.d.execute_script("return window.innerWidth")
        assert inner == WIDTH and width <= WIDTH, f"page is {width}px wide in a {inner}px viewport"

    def fetch_text(self, url: str) -> str:
        script = "const done = arguments[1]; fetch(arguments[0]).then(r => r.text()).then(done);"
        return str(self.d.execute_async_script(script, url))


@pytest.fixture
def page(driver: Any, server: tuple[ServerProcess, str]) -> Page:
    process, _ = server
    return Page(driver, process.url)


def _wait_for_file(folder: Path, suffix: str, timeout: float = 20.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [p for p in folder.glob(f"*{suffix}") if not p.name.endswith(".crdownload")]
        if done and not list(folder.glob("*.crdownload")):
            return done[0]
        time.sleep(0.05)
    raise AssertionError(f"no {suffix} download in {folder}: {list(folder.iterdir())}")


def test_baseline_two_conditions_pca_and_h5ad(
    page: Page, server: tuple[ServerProcess, str], downloads: Path
) -> None:
    import anndata

    page.open(server[1])
    page.one("#start-empty").click()
    assert len(page.all(".condition")) == 1
    first = page.condition(0)
    page.pick(first, "tissue_ontology_id", "lung", "UBERON:0002048")
    assert "lung" in page.one(".hint", page.field(first, "tissue_ontology_id")).text
    page.choose(first, "sex", "male")
    page.choose(first, "sample_type", "primary tissue")
    page.type(page.one("input", page.field(first, "num_samples")), "3")

    page.one("#add-condition").click()
    second = page.condition(1)
    page.pick(second, "cell_line_ontology_id", "K-562", "CVCL_0004")
    page.choose(second, "sample_type", "cell line")
    page.type(page.one("input", page.field(second, "num_samples")), "2")
    page.type(page.one("#opt-seed"), "7")

    # the query JSON on the page is the query that will be sent
    def settled() -> bool:  # every edit above reflected (the page updates as it goes)
        q = json.loads(page.text("#query-json"))
        return q.get("seed") == 7 and [i["num_samples"] for i in q["inputs"]] == [3, 2]

    page.wait(settled, "the JSON to show every edit")
    shown = json.loads(page.text("#query-json"))
    assert [i["num_samples"] for i in shown["inputs"]] == [3, 2]
    assert shown["inputs"][0]["metadata"] == {
        "sample_type": "primary tissue",
        "sex": "male",
        "tissue_ontology_id": "UBERON:0002048",
    }
    assert shown["inputs"][1]["metadata"] == {
        "cell_line_ontology_id": "CVCL_0004",
        "sample_type": "cell line",
    }
    assert shown["seed"] == 7 and shown["sampling_strategy"] == "sample generation"

    page.run()
    plot = page.wait(lambda: page.one("#pca-plot svg[data-points='5']"), "the PCA plot")
    points = page.all("circle.pt", plot)
    assert len(points) == 5
    assert sorted(p.get_attribute("data-input") for p in points) == ["0", "0", "0", "1", "1"]
    assert len(page.all("#pca-legend li")) == 2
    assert "CVCL_0004" in page.text("#pca-legend")
    assert "5 sample(s)" in page.text("#run-status")
    page.no_horizontal_overflow()
    page.shot("baseline-pca")

    # the preview (samples × top genes), reached from the tabs by keyboard
    from selenium.webdriver.common.keys import Keys

    page.one("#tab-pca").send_keys(Keys.ARROW_RIGHT)
    page.wait(lambda: page.one("#tab-preview").get_attribute("aria-selected") == "true", "tab")
    assert page.d.switch_to.active_element == page.one("#tab-preview")
    rows = page.all("#preview-table tbody tr")
    assert len(rows) == 5 and len(page.all("#preview-table thead th")) == 3 + 20

    for old in downloads.glob("*"):
        old.unlink()
    page.one("#downloads a[data-format='h5ad']").click()
    adata = anndata.read_h5ad(_wait_for_file(downloads, ".h5ad"))
    assert adata.shape == (5, 20_120)
    assert list(adata.obs["tissue_ontology_id"][:3]) == ["UBERON:0002048"] * 3
    assert list(adata.obs["cell_line_ontology_id"][3:]) == ["CVCL_0004"] * 2
    assert "symbol" in adata.var and np.asarray(adata.X).sum(axis=1).min() > 0


def test_reference_conditioning_with_an_uploaded_csv(
    page: Page, server: tuple[ServerProcess, str], tmp_path: Path
) -> None:
    model_id = "gem-1-bulk_reference-conditioning"
    example = get_example_query(model_id)["example_query"]
    reference = np.asarray(example["inputs"][0]["counts"], dtype=np.int64)
    genes = default_gene_space()
    # genes × samples, named by symbol (the second sample: the first at a third of the depth)
    seen, lines = set(), ["gene,untreated_a,untreated_b"]
    for i in np.flatnonzero(reference):
        symbol = genes.symbols[i]
        if len(genes.ids_for_symbol(symbol)) == 1 and symbol not in seen:
            seen.add(symbol)
            lines.append(f"{symbol},{reference[i]},{reference[i] // 3}")
    upload = tmp_path / "my_reference.csv"
    upload.write_text("\n".join(lines) + "\n")

    page.open(server[1], model_id)
    page.one("input[name=ref-source][value=upload]").click()
    page.one("#ref-file").send_keys(str(upload))
    page.wait(lambda: "2 sample(s)" in page.text("#ref-status"), "the upload")
    assert f"{len(lines) - 1:,} of {len(lines) - 1:,} gene names mapped" in page.text("#ref-status")
    from selenium.webdriver.support.ui import Select

    Select(page.one("#ref-sample")).select_by_value("1")  # untreated_b
    card = page.condition(0)
    assert (
        page.one("input", page.field(card, "perturbation_ontology_id")).get_attribute("value")
        == "CHEMBL384467"
    )  # dexamethasone, from the model's example
    page.type(page.one("input", page.field(card, "num_samples")), "2")
    page.run()

    plot = page.wait(
        lambda: page.one("#fc-plot[data-genes]"), "the fold-change plot"
    )  # the first tab for reference conditioning
    assert int(plot.get_attribute("data-genes")) > 5000
    page.type(page.one("#gene-search"), "FKBP5")
    page.wait(lambda: "FKBP5" in page.text("#fc-table tbody"), "FKBP5 in the gene table")
    rows = page.all("#fc-table tbody tr")
    assert len(rows) == 1 and "ENSG00000096060" in rows[0].text
    rows[0].send_keys("\n")  # Enter marks the gene in the plot
    page.no_horizontal_overflow()
    page.shot("reference-conditioning-fold-change")

    page.one("#tab-pca").click()
    svg = page.wait(lambda: page.one("#pca-plot svg[data-points='3']"), "PCA with the reference")
    assert len(page.all("path.ref", svg)) == 1 and len(page.all("circle.pt", svg)) == 2

    # the query the page sent carried the chosen sample, in the model's gene order
    sent = json.loads(
        page.fetch_text(page.one("#downloads a[data-format='query']").get_attribute("href"))
    )
    counts = np.asarray(sent["inputs"][0]["counts"])
    assert counts.shape == (20_120,)
    mapped = np.zeros_like(reference)
    for line in lines[1:]:
        symbol, _, third = line.split(",")
        mapped[genes.index_of(genes.ids_for_symbol(symbol)[0])] = int(third)
    assert np.array_equal(counts, mapped)
    assert sent["inputs"][0]["metadata"]["perturbation_ontology_id"] == "CHEMBL384467"


def test_a_422_problem_is_shown_next_to_its_field(
    page: Page, server: tuple[ServerProcess, str]
) -> None:
    from selenium.webdriver.common.keys import Keys

    page.open(server[1])
    page.one("#start-empty").click()
    card = page.condition(0)
    tissue = page.one("input", page.field(card, "tissue_ontology_id"))
    tissue.send_keys("UBERON:9999999", Keys.ESCAPE)
    page.type(page.one("input", page.field(card, "num_samples")), "0")
    page.one("#run").click()
    slot = page.wait(
        lambda: (
            page.one('[data-problem-for="inputs[0].metadata.tissue_ontology_id"]')
            if page.text('[data-problem-for="inputs[0].metadata.tissue_ontology_id"]')
            else None
        ),
        "the tissue problem",
    )
    assert "'UBERON:9999999' does not exist in UBERON" in slot.text
    # next to its field: inside the same field box as the input, which is marked invalid
    assert page.one("input", page.field(card, "tissue_ontology_id")) == tissue
    assert slot in page.all(".problem", page.field(card, "tissue_ontology_id"))
    assert tissue.get_attribute("aria-invalid") == "true"
    samples = page.text('[data-problem-for="inputs[0].num_samples"]')
    assert "must be between 1 and" in samples
    assert "2 problem(s)" in page.text("#run-status")
    assert page.text("#p-general") == ""  # nothing fell through to the general box
    page.no_horizontal_overflow()
    page.shot("validation-problem")


def test_predict_metadata_from_an_uploaded_table(
    page: Page, server: tuple[ServerProcess, str], tmp_path: Path
) -> None:
    model_id = "gem-1-bulk_predict-metadata"
    reference = np.asarray(get_example_query(model_id)["example_query"]["inputs"][0]["counts"])
    genes = default_gene_space()
    keep = np.flatnonzero(reference)
    # samples × genes, named by Ensembl id, tab-separated
    header = "sample\t" + "\t".join(genes.gene_ids[i] for i in keep)
    rows = [
        f"{name}\t" + "\t".join(str(reference[i] // d) for i in keep)
        for name, d in (("deep", 1), ("shallow", 4))
    ]
    upload = tmp_path / "samples.tsv"
    upload.write_text("\n".join([header, *rows]) + "\n")

    page.open(server[1], model_id)
    page.one("input[name=ref-source][value=upload]").click()
    page.one("#ref-file").send_keys(str(upload))
    page.wait(lambda: "2 sample(s)" in page.text("#ref-status"), "the upload")
    page.run()
    bars = page.wait(lambda: page.all("#probs-bars .bars"), "the class probabilities")
    fields = [b.get_attribute("data-field") for b in bars]
    assert {"tissue_ontology_id", "sex", "sample_type"} <= set(fields)
    sex = page.all(".bar-row .p", bars[fields.index("sex")])
    shares = [float(p.text.rstrip("%")) for p in sex]
    assert shares == sorted(shares, reverse=True) and abs(sum(shares) - 100) < 0.5
    from selenium.webdriver.support.ui import Select

    choose = Select(page.one("#probs-sample"))
    assert [o.text for o in choose.options] == ["deep", "shallow"]
    choose.select_by_visible_text("shallow")
    assert "2 sample(s)" in page.text("#run-status")
    page.no_horizontal_overflow()
    page.shot("predict-metadata")
