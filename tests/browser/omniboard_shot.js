// Headless check of an Omniboard page: the runs list shows a run, and its metric curve draws.
// usage: node omniboard_shot.js URL CHROMIUM OUT_PREFIX RUN_ID METRIC
// Needs puppeteer-core (npm install puppeteer-core) resolvable from NODE_PATH. Prints JSON.
const puppeteer = require('puppeteer-core');
const [url, executablePath, out, runId, metric] = process.argv.slice(2);
const sleep = ms => new Promise(r => setTimeout(r, ms));

(async () => {
  const browser = await puppeteer.launch({executablePath, headless: 'new',
    args: ['--no-sandbox', '--disable-gpu', '--window-size=1400,1000']});
  const result = {};
  try {
    const page = await browser.newPage();
    await page.setViewport({width: 1400, height: 1000});
    await page.goto(url, {waitUntil: 'domcontentloaded', timeout: 120000});
    await page.waitForFunction(() => document.body.innerText.includes('experiments'), {timeout: 120000});
    await sleep(1500);
    await page.screenshot({path: `${out}_list.png`});
    result.list_has_run = await page.evaluate(id => [...document.querySelectorAll('.public_fixedDataTableCell_cellContent')]
      .some(c => c.innerText.trim() === id), runId);
    // expand the run's row: the ► cell of the row whose Id cell reads runId
    const expanded = await page.evaluate(id => {
      const rows = [...document.querySelectorAll('.public_fixedDataTableRow_main')];
      for (const row of rows) {
        const cells = [...row.querySelectorAll('.public_fixedDataTableCell_cellContent')];
        if (cells.some(c => c.innerText.trim() === id)) {
          const toggle = cells.find(c => c.innerText.trim() === '►');
          if (!toggle) return false;
          (toggle.querySelector('a, span, div') || toggle).click();
          return true;
        }
      }
      return false;
    }, runId);
    result.expanded = expanded;
    await sleep(2500);
    const tabs = await page.$$('a');
    for (const tab of tabs) {
      const text = await page.evaluate(el => el.innerText, tab);
      if (text.includes('Metrics Plot')) { await tab.click(); break; }
    }
    await sleep(2500);
    // pick the metric in the multiselect
    await page.evaluate(() => { const b = document.querySelector('#plot-metric-names button'); if (b) b.click(); });
    await sleep(800);
    await page.evaluate(name => {
      const labels = [...document.querySelectorAll('#plot-metric-names label, #plot-metric-names li')];
      const hit = labels.find(l => l.innerText.trim() === name);
      if (hit) hit.click();
    }, metric);
    await sleep(4000);
    result.metric_listed = await page.evaluate(name => document.body.innerText.includes(name), metric);
    result.curve_svg = await page.evaluate(() => document.querySelectorAll('.metrics-plot-content svg path.js-line, .metrics-plot-content .scatterlayer path').length);
    await page.screenshot({path: `${out}_metric.png`, fullPage: false});
  } catch (e) {
    result.error = String(e);
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(result));
})();
