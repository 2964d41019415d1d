// Drive the 'beet listen' page in headless Debian chromium with a fake
// microphone that plays a WAV file, press Record, wait for the answer.
//
// Usage: node tests/browser/listen.js URL CLIP.wav SCREENSHOT.png PROFILE_DIR [UPLOAD_FILE]
// Prints one JSON line: what the page shows (title, offset, confidence,
// same-vibe titles, whether the early 4 s answer ended the recording),
// then, with UPLOAD_FILE, the title the file-upload fallback shows.
// PLAYWRIGHT_CORE: folder of the playwright-core package
// (scripts/install_browser.sh puts it in .cache/browser/node_modules).
"use strict";
const path = require("path");
const { chromium } = require(process.env.PLAYWRIGHT_CORE ||
  path.join(__dirname, "..", "..", ".cache", "browser", "node_modules", "playwright-core"));

async function main() {
  const [url, clip, screenshot, profile, uploadFile] = process.argv.slice(2);
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    viewport: { width: 390, height: 844 },
    deviceScaleFactor: 1,
    isMobile: true,
    hasTouch: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu",
      "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
      `--use-file-for-fake-audio-capture=${clip}`,
      "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required",
    ],
  });
  try {
    const page = context.pages()[0] || (await context.newPage());
    const problems = [];
    page.on("pageerror", (err) => problems.push(String(err)));
    page.on("console", (msg) => { if (msg.type() === "error") problems.push(msg.text()); });
    await page.goto(url);
    const secure = await page.evaluate(() => window.isSecureContext);
    const started = Date.now();
    await page.click("#record");
    await page.waitForSelector("#answer:not([hidden]) .title", { timeout: 60000 });
    const seconds = (Date.now() - started) / 1000;
    // Let the audio players lay out before the picture.
    await page.waitForTimeout(300);
    const shown = await page.evaluate(() => ({
      title: document.querySelector("#answer .title").textContent,
      meta: (document.querySelector("#answer .meta") || {}).textContent || "",
      offset: (document.querySelector("#answer .offset") || {}).textContent || null,
      confidence: (document.querySelector("#answer .confidence") || {}).textContent || null,
      similar: [...document.querySelectorAll("#vibe-list li .t")].map((n) => n.textContent),
      audio: [...document.querySelectorAll("#vibe-list audio")].map((a) => a.getAttribute("src")),
      m3u: document.querySelector("#m3u").getAttribute("href"),
      status: document.querySelector("#status").textContent,
    }));
    await page.screenshot({ path: screenshot, fullPage: true });
    // The first same-vibe track plays in the page (Range requests to the server).
    const playable = await page.evaluate(async () => {
      const a = document.querySelector("#vibe-list audio");
      if (!a) return null;
      a.muted = true;
      a.preload = "auto";
      a.load();
      return await new Promise((resolve) => {
        a.addEventListener("loadedmetadata", () => resolve(a.duration), { once: true });
        a.addEventListener("error", () => resolve(-1), { once: true });
        setTimeout(() => resolve(-2), 15000);
      });
    });
    let uploaded = null;
    if (uploadFile) {
      await page.setInputFiles("#file", uploadFile);
      await page.waitForFunction(() => /Found it|Done/.test(document.querySelector("#status").textContent),
        null, { timeout: 60000 });
      uploaded = await page.evaluate(() => document.querySelector("#answer .title").textContent);
    }
    console.log(JSON.stringify({ ...shown, seconds, secure, playable, uploaded, problems }));
  } finally {
    await context.close();
  }
}

main().catch((err) => { console.error(err && err.stack || String(err)); process.exit(1); });
