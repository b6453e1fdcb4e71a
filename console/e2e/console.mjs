// Drives the console in Debian's Chromium with playwright-core (no downloaded browser).
//   node e2e/console.mjs <editor|viewer|refresh|stream|revoked|access|busy|forms>
// Environment: BASE_URL, VOXMESH_USER, VOXMESH_PASSWORD, OUT_DIR, and JOB_ID for `stream` and
// `revoked`.
// Prints one JSON object with what it saw; exits non-zero if any step fails.
import { chromium } from "playwright-core";
import { mkdirSync, statSync } from "node:fs";
import { join } from "node:path";

const scenario = process.argv[2];
const { BASE_URL, VOXMESH_USER, VOXMESH_PASSWORD, OUT_DIR = "." } = process.env;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const report = { scenario, steps: [] };
const step = (name, extra = {}) => report.steps.push({ name, t: Date.now(), ...extra });

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required"],
});
const page = await browser.newPage({ acceptDownloads: true, viewport: { width: 1280, height: 800 } });
const consoleErrors = [];
page.on("pageerror", (err) => consoleErrors.push(String(err)));
page.on("console", (msg) => { if (msg.type() === "error") consoleErrors.push(`console: ${msg.text()}`); });
page.setDefaultTimeout(30_000);
mkdirSync(OUT_DIR, { recursive: true });

async function login() {
  await page.goto(BASE_URL);
  await page.getByTestId("username").fill(VOXMESH_USER);
  await page.getByTestId("password").fill(VOXMESH_PASSWORD);
  await page.getByTestId("login").click();
  await page.getByTestId("jobs").waitFor();
  step("logged in", { who: await page.getByTestId("who").textContent() });
}

async function editor() {
  await login();
  await page.getByTestId("create-form").waitFor();
  await page.getByTestId("type").selectOption({ label: "Text to speech" });
  await page.getByTestId("title").fill("Browser TTS");
  const text = [
    "Hello from the Voxmesh console.", "This job was created in a real browser.",
    "Its progress arrives over gRPC-web through Envoy.", "Each sentence moves the bar a little.",
    "The result plays right here in the page.", "Thank you for listening.",
  ].join(" ");
  await page.getByTestId("text").fill(text);
  // Record every value the detail progress bar shows, as the page updates it, from before the
  // job exists: on a loaded machine a short job can finish before a later observer is in place.
  await page.evaluate(() => {
    window.__seen = [];
    new MutationObserver(() => {
      const raw = document.querySelector("[data-testid=detail-progress]")?.getAttribute("aria-valuenow");
      if (raw == null) return;
      const v = Number(raw);
      if (window.__seen.at(-1) !== v) window.__seen.push(v);
    }).observe(document.body, { attributes: true, subtree: true, childList: true });
  });
  await page.getByTestId("create").click();
  const bar = page.getByTestId("detail-progress");
  await bar.waitFor();
  await page.waitForFunction(() => document.querySelector("[data-testid=detail-progress]")?.getAttribute("aria-valuenow") === "100", null, { timeout: 120_000 });
  await page.waitForFunction(() => document.querySelector("[data-testid=detail-status]")?.textContent?.startsWith("completed"), null, { timeout: 30_000 });
  step("progress reached 100%", { seen: await page.evaluate(() => window.__seen) });
  const audio = page.locator("audio[data-testid^=audio-]").first();
  await audio.waitFor({ timeout: 30_000 });
  const name = (await audio.getAttribute("data-testid")).slice("audio-".length);
  await page.getByTestId(`audio-${name}`).evaluate((a) => a.play()); // the player's own control
  await page.waitForFunction((n) => {
    const a = document.querySelector(`[data-testid="audio-${n}"]`);
    return a && a.currentTime > 0.3 && !a.paused;
  }, name, { timeout: 20_000 });
  const played = await page.evaluate((n) => {
    const a = document.querySelector(`[data-testid="audio-${n}"]`);
    return { currentTime: a.currentTime, duration: a.duration };
  }, name);
  step("played the result", { file: name, ...played });
  const screenshot = join(OUT_DIR, "console-tts.png");
  await page.screenshot({ path: screenshot, fullPage: true });
  step("screenshot", { path: screenshot });
  const [download] = await Promise.all([page.waitForEvent("download"), page.getByTestId(`download-${name}`).click()]);
  step("downloaded", { filename: download.suggestedFilename(), bytes: statSync(await download.path()).size });
  // Filters: by type shows the job; by a status it doesn't have hides it.
  await page.getByTestId("filter-type").selectOption({ label: "Text to speech" });
  await page.locator("tr[data-job]").first().waitFor();
  const shown = await page.locator("tr[data-job]").count();
  await page.getByTestId("filter-status").selectOption({ label: "failed" });
  await page.getByText("No jobs match.").waitFor();
  step("filters", { ttsJobs: shown });
  const refresh = await page.evaluate(() => JSON.parse(sessionStorage.getItem("voxmesh.session")).tokens.refresh);
  await page.getByTestId("logout").click();
  await page.getByTestId("login").waitFor();
  step("logged out", { refreshToken: refresh, stored: await page.evaluate(() => sessionStorage.getItem("voxmesh.session")) });
}

async function viewer() {
  await login();
  await page.locator("tr[data-job]").first().waitFor();
  step("sees jobs", {
    rows: await page.locator("tr[data-job]").count(),
    createForms: await page.getByTestId("create-form").count(),
    writeButtons: await page.locator("[data-testid^=cancel-], [data-testid^=retry-]").count(),
    readOnlyNote: await page.getByTestId("read-only").isVisible(),
  });
  // The page hides the controls; the server refuses the call itself too.
  const refused = await page.evaluate(async () => {
    const projectId = document.querySelector("tr[data-job]") ? (await window.voxmesh.jobs.listJobs({})).jobs[0].projectId : "";
    try {
      await window.voxmesh.jobs.createJob({ projectId, params: { case: "tts", value: { text: "sneaky" } } });
      return { refused: false };
    } catch (err) {
      return { refused: true, code: err.code, message: err.rawMessage };
    }
  });
  step("create refused", refused);
  await page.screenshot({ path: join(OUT_DIR, "console-viewer.png"), fullPage: true });
}

async function refresh() {
  await login();
  const first = await page.evaluate(() => JSON.parse(sessionStorage.getItem("voxmesh.session")).tokens.access);
  await page.waitForFunction(() => Number(document.querySelector("header")?.dataset.refreshes) >= 2, null, { timeout: 20_000 });
  await page.getByTestId("reload").click();
  await page.waitForTimeout(500);
  step("refreshed", {
    refreshes: Number(await page.locator("header").getAttribute("data-refreshes")),
    tokenChanged: first !== (await page.evaluate(() => JSON.parse(sessionStorage.getItem("voxmesh.session")).tokens.access)),
    notice: await page.getByTestId("notice").evaluate((n) => (n.hidden ? "" : n.textContent)),
    stillSignedIn: await page.getByTestId("jobs").isVisible(),
  });
}

async function stream() {
  await login();
  const arrivals = await page.evaluate(async (jobId) => {
    const out = [];
    const t0 = performance.now();
    for await (const ev of window.voxmesh.jobs.watchJob({ jobId })) {
      out.push({ kind: ev.event.case, at: performance.now() - t0, percent: ev.event.case === "progress" ? ev.event.value.percent : null });
    }
    return out;
  }, process.env.JOB_ID);
  step("streamed", { arrivals });
}

// The sign-in is revoked elsewhere (its refresh token logged out, as another tab or an admin
// would) while the page follows a running job: the server ends the stream, the page's refresh
// fails, and it shows the sign-in form instead of retrying forever.
async function revoked() {
  await login();
  const status = page.getByTestId(`status-${process.env.JOB_ID}`);
  await page.waitForFunction((id) => document.querySelector(`[data-testid=status-${id}]`)?.textContent === "running", process.env.JOB_ID, { timeout: 30_000 });
  step("following", { status: await status.textContent() });
  await page.evaluate(async () => {
    const refreshToken = JSON.parse(sessionStorage.getItem("voxmesh.session")).tokens.refresh;
    await window.voxmesh.auth.logout({ refreshToken }); // the raw RPC: the page is not told
  });
  const revokedAt = Date.now();
  await page.getByTestId("login-error").waitFor({ timeout: 20_000 });
  step("signed out", {
    afterMs: Date.now() - revokedAt,
    message: await page.getByTestId("login-error").textContent(),
    stored: await page.evaluate(() => sessionStorage.getItem("voxmesh.session")),
  });
  await page.screenshot({ path: join(OUT_DIR, "console-revoked.png"), fullPage: true });
}

// One gRPC-web call made by hand from the page with an API key (not the page's own session):
// GetCurrentUser, answering its grpc-status (from the trailers-only headers or the trailer frame).
async function callWithKey(key) {
  return page.evaluate(async (k) => {
    const reply = await fetch("/voxmesh.v1.UserService/GetCurrentUser", {
      method: "POST",
      headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1", authorization: `Bearer ${k}` },
      body: new Uint8Array([0, 0, 0, 0, 0]),
    });
    const body = new TextDecoder("latin1").decode(await reply.arrayBuffer());
    const status = reply.headers.get("grpc-status") ?? /grpc-status:\s*(\d+)/.exec(body)?.[1];
    return { http: reply.status, grpcStatus: Number(status), message: reply.headers.get("grpc-message") ?? "" };
  }, key);
}

// API keys and webhooks from the console: make a key (shown once), use it, revoke it; save a
// project's webhook URL and be refused a loopback one.
async function access() {
  await login();
  page.on("dialog", (dialog) => dialog.accept()); // "Revoke the key …?"
  await page.getByTestId("open-access").click();
  await page.getByTestId("access").waitFor();
  await page.getByTestId("key-name").fill("ci-pipeline");
  await page.getByTestId("key-role").selectOption({ label: "viewer" });
  await page.getByTestId("key-days").fill("30");
  await page.getByTestId("key-create").click();
  const secret = await page.getByTestId("key-secret").textContent();
  await page.getByTestId("key-ci-pipeline").waitFor();
  step("key created", {
    secret,
    state: await page.getByTestId("key-state-ci-pipeline").textContent(),
    listed: await page.getByTestId("key-ci-pipeline").textContent(),
  });
  step("key works", await callWithKey(secret));
  await page.getByTestId("hook-urls").fill("http://127.0.0.1:9/hook");
  await page.getByTestId("hook-save").click();
  await page.waitForFunction(() => /private/.test(document.querySelector("[data-testid=notice]")?.textContent ?? ""));
  step("loopback webhook refused", { notice: await page.getByTestId("notice").textContent() });
  await page.getByTestId("hook-urls").fill("https://hooks.example.com/voxmesh");
  await page.getByTestId("hook-stages").check();
  await page.getByTestId("hook-save").click();
  await page.waitForFunction(() => (document.querySelector("[data-testid=hook-secret]")?.textContent ?? "").startsWith("whsec_"));
  step("webhook saved", { secret: await page.getByTestId("hook-secret").textContent() });
  await page.screenshot({ path: join(OUT_DIR, "console-access.png"), fullPage: true });
  step("screenshot", { path: join(OUT_DIR, "console-access.png") });
  await page.getByTestId("revoke-ci-pipeline").click();
  await page.waitForFunction(() => (document.querySelector("[data-testid=key-state-ci-pipeline]")?.textContent ?? "").startsWith("revoked"));
  step("key revoked", {
    state: await page.getByTestId("key-state-ci-pipeline").textContent(),
    revokeButtons: await page.getByTestId("revoke-ci-pipeline").count(),
    call: await callWithKey(secret),
  });
}

// 100 pending and 10 running jobs in view: the page keeps one list stream (WatchJobs) instead
// of one per row, so it stays responsive (a browser allows 6 HTTP/1.1 connections per host).
async function busy() {
  const streams = { WatchJob: 0, WatchJobs: 0 };
  page.on("request", (r) => {
    const m = /JobService\/(WatchJobs?)$/.exec(new URL(r.url()).pathname);
    if (m) streams[m[1]] += 1;
  });
  await login();
  await page.waitForFunction(() => document.querySelectorAll("tr[data-job]").length >= 100);
  const rows = await page.locator("tr[data-job]").count();
  const running = await page.locator("td.status", { hasText: "running" }).count();
  step("listed", { rows, running, pageInfo: await page.getByTestId("page-info").textContent() });
  // A running row's bar moves while nothing is reloaded.
  const bar = page.locator("tr[data-job]", { has: page.locator("td.status", { hasText: "running" }) }).first().locator(".bar");
  const before = Number(await bar.getAttribute("aria-valuenow"));
  const id = await bar.getAttribute("data-testid");
  await page.waitForFunction(([tid, v]) => Number(document.querySelector(`[data-testid="${tid}"]`)?.getAttribute("aria-valuenow")) > v, [id, before], { timeout: 30_000 });
  step("row moved live", { before, after: Number(await page.getByTestId(id).getAttribute("aria-valuenow")) });
  // Create from the page's form: the answer comes within a second even with 110 jobs active.
  await page.getByTestId("type").selectOption({ label: "Text to speech" });
  await page.getByTestId("title").fill("Made while busy");
  await page.getByTestId("text").fill("Still responsive.");
  const t0 = Date.now();
  await page.getByTestId("create").click();
  await page.waitForFunction(() => /Created/.test(document.querySelector("[data-testid=notice]")?.textContent ?? ""), null, { timeout: 30_000 });
  const createMs = Date.now() - t0;
  await page.getByText("Made while busy").first().waitFor();
  step("created from the form", { ms: createMs });
  // A job made elsewhere (not by this page's form) appears through the stream.
  const t1 = Date.now();
  await page.evaluate(async () => {
    const projectId = (await window.voxmesh.projects.listProjects({})).projects[0].id;
    await window.voxmesh.jobs.createJob({ projectId, title: "Made elsewhere", params: { case: "tts", value: { text: "Hello." } } });
  });
  await page.getByText("Made elsewhere").first().waitFor({ timeout: 10_000 });
  step("appeared live", { ms: Date.now() - t1 });
  const shot = join(OUT_DIR, "console-busy.png");
  await page.screenshot({ path: shot });
  step("screenshot", { path: shot });
  step("streams", streams);
}

// Every job type's form, a transcript as a person reads it, Cancel and Retry, and the layout at
// 1280 and 400 px. SPEECH is a WAV of real speech; only an STT worker runs.
async function forms() {
  await login();
  const created = {};
  const create = async (label, title, fill) => {
    await page.getByTestId("type").selectOption({ label });
    await page.getByTestId("title").fill(title);
    await fill();
    await page.getByTestId("create").click();
    await page.waitForFunction((t) => document.querySelector("#detail h2")?.textContent === t, title, { timeout: 60_000 });
    created[label] = await page.locator(`tr[data-job]`, { hasText: title }).first().getAttribute("data-job");
  };
  const form = (name) => page.locator(`[data-testid=create-form] [name=${name}]`);
  await create("Text to speech", "Form: speech", async () => { await page.getByTestId("text").fill("Made in the form."); });
  await create("Voice cloning", "Form: clone", async () => {
    await page.getByTestId("file").setInputFiles(process.env.SPEECH);
    await form("text").fill("Spoken in the cloned voice.");
  });
  await create("Dubbing", "Form: dub", async () => {
    await page.getByTestId("file").setInputFiles(process.env.SPEECH);
    await form("target_language").fill("pt");
  });
  await create("AI story", "Form: story", async () => { await form("prompt").fill("A lighthouse keeper befriends a storm"); });
  await create("Speech to text", "Form: transcript", async () => {
    await page.getByTestId("file").setInputFiles(process.env.SPEECH);
    await form("language").fill("en");
  });
  step("created every type", { ids: created });
  // The transcription finishes: timestamped text, both subtitle formats, a labelled meta table.
  await page.getByTestId("transcript").waitFor({ timeout: 180_000 });
  await page.getByTestId("meta").waitFor();
  step("transcript shown", {
    lines: await page.locator("[data-testid=transcript] li").count(),
    first: await page.locator("[data-testid=transcript] li").first().textContent(),
    srt: await page.getByTestId("preview-transcript.srt").textContent(),
    vtt: await page.getByTestId("preview-transcript.vtt").textContent(),
    meta: await page.getByTestId("meta").textContent(),
    stage: await page.getByTestId("stage").textContent(),
  });
  await page.screenshot({ path: join(OUT_DIR, "console-1280.png"), fullPage: true });
  // Cancel the queued speech job from its row, then Retry it.
  const tts = created["Text to speech"];
  await page.getByTestId(`cancel-${tts}`).click();
  await page.waitForFunction((id) => document.querySelector(`[data-testid=status-${id}]`)?.textContent === "cancelled", tts);
  await page.getByTestId(`retry-${tts}`).click();
  await page.waitForFunction((id) => document.querySelector(`[data-testid=status-${id}]`)?.textContent?.startsWith("pending"), tts);
  step("cancelled and retried", { status: await page.getByTestId(`status-${tts}`).textContent() });
  // 400 px wide: one column, nothing overlaps, nothing wider than the screen.
  await page.setViewportSize({ width: 400, height: 900 });
  await page.waitForTimeout(200); // layout settles (no event to wait on for a resize reflow)
  step("narrow layout", await page.evaluate(() => {
    const jobs = document.querySelector("section.jobs").getBoundingClientRect();
    const aside = document.querySelector("aside").getBoundingClientRect();
    return { overlap: aside.top < jobs.bottom - 1 && aside.left < jobs.right - 1, pageWidth: document.documentElement.scrollWidth };
  }));
  await page.screenshot({ path: join(OUT_DIR, "console-400.png"), fullPage: true });
  const icon = await page.evaluate(async () => { const r = await fetch("/favicon.ico"); return { status: r.status, type: r.headers.get("content-type") }; });
  step("favicon", icon);
}

try {
  await { editor, viewer, refresh, stream, revoked, access, busy, forms }[scenario]();
  report.ok = true;
} catch (err) {
  report.ok = false;
  report.error = String(err?.stack || err);
  await page.screenshot({ path: join(OUT_DIR, `failure-${scenario}.png`), fullPage: true }).catch(() => {});
} finally {
  report.pageErrors = consoleErrors;
  await browser.close();
}
console.log(JSON.stringify(report));
process.exit(report.ok ? 0 : 1);
