// Open dreamnfsd report.html pages in headless Chromium, offline, and say what happened: one JSON line per page.
// Usage: node tests/report_browser.mjs REPORT.html OUT_DIR [REPORT.html OUT_DIR ...]
//   (needs `npm ci`: playwright-core; and a Chromium: $CHROMIUM, else /usr/bin/chromium)
// Writes into each OUT_DIR viewer.png (the 3D view's region), viewer_picked.png (after picking the last mesh, when
// the page has a picker) and page.png (the page from its top; page_full.png too with REPORT_FULL_PAGE=1); the Python
// test judges the pixels. One browser serves every page. Exit status: 0 when every JSON line was printed (the caller
// checks them), 2 when the browser could not be driven.
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { pathToFileURL } from "node:url";

import { chromium } from "playwright-core";

const pairs = process.argv.slice(2);
if (pairs.length === 0 || pairs.length % 2) {
  console.error("usage: node tests/report_browser.mjs REPORT.html OUT_DIR [REPORT.html OUT_DIR ...]");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
// Software WebGL (SwiftShader through ANGLE): a headless machine has no GPU, and plotly's Mesh3d needs WebGL.
const args = ["--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-gpu-sandbox"];
if (process.getuid && process.getuid() === 0) args.push("--no-sandbox"); // root (CI containers) cannot sandbox
const READY = () => document.body.dataset.viewerReady === "1" || Boolean(document.body.dataset.viewerError);

async function withJavaScript(browser, result, outDir) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 }, offline: true });
  const page = await context.newPage();
  page.on("console", (m) => m.type() === "error" && result.consoleErrors.push(m.text()));
  page.on("pageerror", (e) => result.consoleErrors.push(`uncaught: ${e.message}`));
  page.on("requestfailed", (r) => result.failedRequests.push(r.url().slice(0, 200)));
  page.on("request", (r) => {
    const url = r.url();
    // The page itself is the one file:// load; data: and blob: URLs are its own bytes, never the network.
    if (!url.startsWith("data:") && !url.startsWith("blob:") && url !== result.url) result.requests.push(url.slice(0, 200));
  });
  await page.goto(result.url, { waitUntil: "load" });
  const started = Date.now();
  await page.waitForFunction(READY, null, { timeout: 90_000, polling: 100 });
  result.readyMs = Date.now() - started;
  Object.assign(result, await page.evaluate(() => ({ ready: document.body.dataset.viewerReady, error: document.body.dataset.viewerError || null })));
  const viewer = page.locator("#viewer");
  await viewer.scrollIntoViewIfNeeded();
  await page.mouse.move(0, 0); // no hover label over the mesh
  await viewer.screenshot({ path: path.join(outDir, "viewer.png") });
  const options = await page.locator("#viewer-pick option").count();
  result.meshes = Math.max(options, 1);
  if (options > 1) {
    await page.selectOption("#viewer-pick", String(options - 1));
    await page.waitForFunction(READY, null, { timeout: 60_000, polling: 100 });
    result.pickedReady = await page.evaluate(() => document.body.dataset.viewerReady);
    await viewer.screenshot({ path: path.join(outDir, "viewer_picked.png") });
    await page.selectOption("#viewer-pick", "0");
    await page.waitForFunction(READY, null, { timeout: 60_000, polling: 100 });
  }
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: path.join(outDir, "page.png") });
  if (process.env.REPORT_FULL_PAGE) await page.screenshot({ path: path.join(outDir, "page_full.png"), fullPage: true });
  await context.close();
}

async function withoutJavaScript(browser, result) {
  // Everything but the 3D view must read without JavaScript: the status, the tables, the curves (an SVG <img>).
  const context = await browser.newContext({ javaScriptEnabled: false, offline: true });
  const page = await context.newPage();
  await page.goto(result.url, { waitUntil: "load" });
  result.noScript = await page.evaluate(() => ({
    images: [...document.images].length,
    brokenImages: [...document.images].filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.alt),
    text: document.body.innerText.length,
    tables: document.querySelectorAll("table").length,
  }));
  await context.close();
}

let browser;
try {
  browser = await chromium.launch({ executablePath, args, headless: true });
  for (let i = 0; i < pairs.length; i += 2) {
    const [file, outDir] = [pairs[i], pairs[i + 1]];
    const result = { url: pathToFileURL(path.resolve(file)).href, consoleErrors: [], requests: [], failedRequests: [] };
    await mkdir(outDir, { recursive: true });
    await withJavaScript(browser, result, outDir);
    await withoutJavaScript(browser, result);
    console.log(JSON.stringify(result));
  }
} catch (err) {
  console.error(`report_browser: ${err}`);
  process.exitCode = 2;
} finally {
  if (browser) await browser.close();
}
