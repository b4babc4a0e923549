// Drives OHIF in Debian's headless Chromium through puppeteer-core (tests/integration/test_ohif_browser.py).
//
//   node ohif_driver.cjs '<json>'   with {puppeteer, chromium, url, watch, seconds}
//
// Opens `url`, waits up to `seconds` for a viewport canvas with real pixels (a cornerstone canvas read back with
// getImageData: pixels that are not all one value), and prints one JSON line: whether it rendered, the page's final
// path, every request to a URL starting with `watch` (method, URL, whether it carried an Authorization header,
// status) and the Study Instance UIDs of every QIDO study answer seen there.
'use strict';

const args = JSON.parse(process.argv[2]);
const puppeteer = require(args.puppeteer);

async function main() {
  const browser = await puppeteer.launch({
    executablePath: args.chromium,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run', '--use-angle=swiftshader', '--enable-unsafe-swiftshader',
    ],
  });
  const out = { rendered: false, path: null, requests: [], studies: [], errors: [] };
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 900 });
    page.on('pageerror', (e) => out.errors.push(String(e).slice(0, 300)));
    page.on('response', async (response) => {
      const request = response.request();
      if (!request.url().startsWith(args.watch)) return;
      const entry = {
        method: request.method(),
        url: request.url(),
        auth: Boolean(request.headers()['authorization']),
        status: response.status(),
      };
      out.requests.push(entry);
      const path = new URL(request.url()).pathname;
      if (request.method() === 'GET' && path.endsWith('/studies') && response.status() === 200) {
        try {
          for (const row of await response.json()) {
            const uid = row['0020000D'] && row['0020000D'].Value && row['0020000D'].Value[0];
            if (uid) out.studies.push(uid);
          }
        } catch (e) {
          out.errors.push('unreadable study answer: ' + String(e).slice(0, 200));
        }
      }
    });
    await page.goto(args.url, { waitUntil: 'domcontentloaded', timeout: args.seconds * 1000 });
    const deadline = Date.now() + args.seconds * 1000;
    while (Date.now() < deadline && !out.rendered) {
      out.rendered = await page.evaluate(() => {
        for (const canvas of document.querySelectorAll('canvas')) {
          if (canvas.width < 16 || canvas.height < 16) continue;
          let ctx;
          try {
            ctx = canvas.getContext('2d', { willReadFrequently: true });
          } catch (e) {
            continue;
          }
          if (!ctx) continue;
          const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
          const seen = new Set();
          for (let i = 0; i < data.length; i += 4 * 7) {
            seen.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
            if (seen.size > 2) return true;
          }
        }
        return false;
      });
      if (!out.rendered) await new Promise((r) => setTimeout(r, 250));
    }
    // Let the thumbnails and prior-study lookups that follow the first image finish (at most 5 s more).
    await page.waitForNetworkIdle({ idleTime: 500, timeout: 5000 }).catch(() => {});
    out.path = new URL(page.url()).pathname;
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + '\n');
  process.exit(1);
});
