// The Voxmesh web console: sign in, browse projects and jobs, create jobs of every type (with
// the resumable upload), follow live progress from WatchJob, play and download results, cancel
// and retry. Viewers get no write controls (and the server refuses them anyway).
import { JobStatus, JobType, AudioFormat, PendingState, SttTask, type Job, type JobResult } from "./gen/voxmesh/v1/jobs_pb";
import type { Project } from "./gen/voxmesh/v1/projects_pb";
import { UserRole } from "./gen/voxmesh/v1/users_pb";
import { Code, ConnectError } from "@connectrpc/connect";
import { createApi, describe, download, upload, type Api } from "./api";
import { accessPanel, deliveries } from "./access";
import { metaTable, renderFiles } from "./results";
import { h } from "./dom";

const TYPES: [JobType, string][] = [
  [JobType.TTS, "Text to speech"],
  [JobType.STT, "Speech to text"],
  [JobType.VOICE_CLONING, "Voice cloning"],
  [JobType.DUBBING, "Dubbing"],
  [JobType.AI_STORIES, "AI story"],
];
const STATUSES = [JobStatus.PENDING, JobStatus.RUNNING, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED];
const ACTIVE = new Set([JobStatus.PENDING, JobStatus.RUNNING]);
const typeName = (t: JobType) => TYPES.find(([v]) => v === t)?.[1] ?? JobType[t];
const statusName = (s: JobStatus) => JobStatus[s].toLowerCase();
const WAITING: Partial<Record<PendingState, string>> = {
  [PendingState.AWAITING_START]: "waiting for start",
  [PendingState.WAITING_FOR_SLOT]: "waiting for a slot",
  [PendingState.QUEUED]: "queued",
};
/** The status a person reads: "pending · queued". */
const jobStatus = (job: Job) => statusName(job.status) + (job.status === JobStatus.PENDING && WAITING[job.pendingState] ? ` · ${WAITING[job.pendingState]}` : "");

const api: Api = createApi(window.location.origin);
(window as unknown as { voxmesh: Api }).voxmesh = api; // for operators' consoles and the tests

const root = document.getElementById("app")!;
const state = {
  projects: [] as Project[],
  jobs: [] as Job[],
  filters: { project: "", type: JobType.UNSPECIFIED, status: JobStatus.UNSPECIFIED },
  /** Page tokens of the pages before this one (paging back), and the next page's token. */
  pages: { before: [] as string[], current: "", next: "", total: 0 },
  /** One WatchJobs stream for the whole list (never one per row: browsers allow 6 HTTP/1.1
   * connections per host), and one WatchJob stream for the open job's detail. */
  list: null as { ctl: AbortController; project: string } | null,
  detail: null as { ctl: AbortController; jobId: string } | null,
  open: "" as string,
};
const PAGE_SIZE = 100;

function notice(text: string, kind: "error" | "info" = "error"): void {
  const bar = document.getElementById("notice");
  if (!bar) return;
  bar.textContent = text;
  bar.className = `notice ${kind}`;
  bar.hidden = !text;
}

// --- sign in -------------------------------------------------------------------------------

function showLogin(message = ""): void {
  stopWatching();
  const user = h("input", { name: "username", autocomplete: "username", required: true, testid: "username" });
  const pass = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true, testid: "password" });
  const error = h("p", { class: "error", testid: "login-error" }, message);
  const form = h("form", {
    class: "login",
    onsubmit: async (e: Event) => {
      e.preventDefault();
      error.textContent = "";
      try {
        await api.session.login(user.value, pass.value);
        await showMain();
      } catch (err) {
        error.textContent = describe(err);
      }
    },
  },
    h("h1", {}, "Voxmesh"),
    h("label", {}, "Username", user),
    h("label", {}, "Password", pass),
    h("button", { type: "submit", testid: "login" }, "Sign in"),
    error,
  );
  root.replaceChildren(form);
  user.focus();
}

api.session.addEventListener("expired", (e) => showLogin(`Signed out: ${(e as CustomEvent).detail}`));
api.session.addEventListener("refreshed", () => {
  const header = document.querySelector<HTMLElement>("header");
  if (header) header.dataset.refreshes = String(api.session.refreshCount);
});

// --- the main view ---------------------------------------------------------------------------

async function showMain(): Promise<void> {
  const me = api.session.user!;
  const header = h("header", { "data-refreshes": String(api.session.refreshCount) },
    h("strong", {}, "Voxmesh"),
    h("span", { class: "who", testid: "who" }, `${me.displayName} · ${UserRole[me.role].toLowerCase()}`),
    h("button", { testid: "open-access", onclick: () => showAccess() }, "API keys & webhooks"),
    h("button", { testid: "logout", onclick: async () => { await api.session.logout(); showLogin("Signed out."); } }, "Sign out"),
  );
  const notices = h("div", { id: "notice", class: "notice", hidden: true, role: "alert", testid: "notice" });
  const layout = h("main", {},
    h("section", { class: "jobs" }, filtersBar(), h("table", { id: "jobs", testid: "jobs" }), h("div", { id: "pager", class: "pager" })),
    h("aside", {}, api.session.canWrite ? createForm() : h("p", { class: "muted", testid: "read-only" }, "Read-only access: viewers can follow jobs but not create or change them."), h("div", { id: "detail" })),
  );
  root.replaceChildren(header, notices, layout);
  try {
    state.projects = (await api.projects.listProjects({ page: { pageSize: 100 } })).projects;
  } catch (err) {
    notice(describe(err));
  }
  for (const select of document.querySelectorAll<HTMLSelectElement>("select[data-projects]")) {
    const keep = select.value;
    select.replaceChildren(
      ...(select.dataset.projects === "any" ? [h("option", { value: "" }, "All projects")] : []),
      ...state.projects.map((p) => h("option", { value: p.id }, p.name)),
    );
    select.value = keep || select.options[0]?.value || "";
  }
  await loadVoices(document.querySelector<HTMLSelectElement>("select[name=project]")?.value ?? "");
  await refreshJobs();
}

function filtersBar(): HTMLElement {
  const project = h("select", { "data-projects": "any", testid: "filter-project", onchange: () => { state.filters.project = project.value; firstPage(); } });
  const type = h("select", { testid: "filter-type", onchange: () => { state.filters.type = Number(type.value); firstPage(); } },
    h("option", { value: "0" }, "All types"), ...TYPES.map(([v, n]) => h("option", { value: String(v) }, n)));
  const status = h("select", { testid: "filter-status", onchange: () => { state.filters.status = Number(status.value); firstPage(); } },
    h("option", { value: "0" }, "Any status"), ...STATUSES.map((s) => h("option", { value: String(s) }, statusName(s))));
  return h("div", { class: "filters" }, project, type, status, h("button", { onclick: () => void refreshJobs(), testid: "reload" }, "Reload"));
}

function firstPage(): void {
  state.pages.before = [];
  void refreshJobs("");
}

async function refreshJobs(page = state.pages.current): Promise<void> {
  try {
    const reply = await api.jobs.listJobs({
      projectId: state.filters.project,
      type: state.filters.type,
      status: state.filters.status,
      page: { pageSize: PAGE_SIZE, pageToken: page },
    });
    state.jobs = reply.jobs;
    state.pages.current = page;
    state.pages.next = reply.page?.nextPageToken ?? "";
    state.pages.total = Number(reply.page?.totalSize ?? reply.jobs.length);
  } catch (err) {
    notice(describe(err));
    return;
  }
  renderJobs();
  followList();
}

/** Start (or keep) the one WatchJobs stream for the jobs the list can show. */
function followList(): void {
  if (state.list && state.list.project === state.filters.project && !state.list.ctl.signal.aborted) return;
  state.list?.ctl.abort();
  const ctl = new AbortController();
  const project = state.filters.project;
  state.list = { ctl, project };
  void (async () => {
    while (!ctl.signal.aborted) {
      try {
        for await (const update of api.jobs.watchJobs({ projectId: project }, { signal: ctl.signal })) {
          if (update.job) applyUpdate(update.job);
        }
      } catch (err) {
        if (ctl.signal.aborted) return;
        if (err instanceof ConnectError && err.code === Code.Unauthenticated) {
          await api.session.refresh(); // the server ends streams whose token expired
          if (!api.session.user) return;
        } else {
          await new Promise((r) => setTimeout(r, 1000));
        }
        if (ctl.signal.aborted) return;
        // Changes made while the stream was down are not replayed: read the list again.
        state.list = null;
        await refreshJobs();
        return;
      }
    }
  })();
}

const matches = (job: Job) =>
  (!state.filters.project || job.projectId === state.filters.project) &&
  (!state.filters.type || job.type === state.filters.type) &&
  (!state.filters.status || job.status === state.filters.status);

/** A job changed: update its row in place, or add a new job at the top of the first page. */
function applyUpdate(job: Job): void {
  const at = state.jobs.findIndex((j) => j.id === job.id);
  if (at >= 0) {
    state.jobs[at] = job;
    document.querySelector(`tr[data-job="${job.id}"]`)?.replaceWith(jobRow(job));
  } else if (!state.pages.current && matches(job)) {
    state.jobs.unshift(job);
    state.pages.total += 1;
    if (state.jobs.length > PAGE_SIZE) state.jobs.pop();
    renderJobs();
  }
}

function progressBar(id: string, percent: number, status: JobStatus): HTMLElement {
  return h("div", { class: `bar ${statusName(status)}`, role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": String(percent), testid: id },
    h("div", { class: "fill", style: `width:${percent}%` }), h("span", {}, `${percent}%`));
}

function setBar(bar: Element | null, percent: number, status?: JobStatus): void {
  if (!bar) return;
  bar.setAttribute("aria-valuenow", String(percent));
  (bar.querySelector(".fill") as HTMLElement).style.width = `${percent}%`;
  bar.querySelector("span")!.textContent = `${percent}%`;
  if (status !== undefined) bar.className = `bar ${statusName(status)}`;
}

function jobRow(job: Job): HTMLElement {
  const canWrite = api.session.canWrite;
  return h("tr", { "data-job": job.id, testid: `job-${job.id}` },
    h("td", {}, h("a", { href: "#", onclick: (e: Event) => { e.preventDefault(); void openJob(job.id); } }, job.title || job.id.slice(0, 8))),
    h("td", {}, typeName(job.type)),
    h("td", { class: "status", testid: `status-${job.id}` }, jobStatus(job)),
    h("td", {}, progressBar(`row-progress-${job.id}`, job.status === JobStatus.COMPLETED ? 100 : job.progress, job.status)),
    h("td", { class: "actions" },
      canWrite && ACTIVE.has(job.status) && h("button", { testid: `cancel-${job.id}`, onclick: () => act("cancel", job.id) }, "Cancel"),
      canWrite && (job.status === JobStatus.FAILED || job.status === JobStatus.CANCELLED) && h("button", { testid: `retry-${job.id}`, onclick: () => act("retry", job.id) }, "Retry"),
    ),
  );
}

function renderJobs(): void {
  const table = document.getElementById("jobs")!;
  table.replaceChildren(
    h("thead", {}, h("tr", {}, ...["Job", "Type", "Status", "Progress", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, ...state.jobs.map(jobRow)),
  );
  if (!state.jobs.length) table.append(h("tbody", {}, h("tr", {}, h("td", { colspan: "5", class: "muted" }, "No jobs match."))));
  const first = state.pages.before.length * PAGE_SIZE;
  const pager = document.getElementById("pager");
  pager?.replaceChildren(
    h("button", { testid: "page-prev", disabled: !state.pages.before.length, onclick: () => void refreshJobs(state.pages.before.pop() ?? "") }, "← Newer"),
    h("span", { class: "muted", testid: "page-info" }, state.jobs.length ? `${first + 1}–${first + state.jobs.length} of ${state.pages.total}` : ""),
    h("button", { testid: "page-next", disabled: !state.pages.next, onclick: () => { state.pages.before.push(state.pages.current); void refreshJobs(state.pages.next); } }, "Older →"),
  );
}

async function act(what: "cancel" | "retry", jobId: string): Promise<void> {
  try {
    if (what === "cancel") await api.jobs.cancelJob({ jobId });
    else await api.jobs.retryJob({ jobId });
    notice(what === "cancel" ? "Cancelled." : "Queued again.", "info");
  } catch (err) {
    notice(describe(err));
  }
  await refreshJobs();
  if (state.open === jobId) await openJob(jobId);
}

// --- live progress ---------------------------------------------------------------------------

function stopWatching(): void {
  state.list?.ctl.abort();
  state.list = null;
  state.detail?.ctl.abort();
  state.detail = null;
}

/** Follow the open job's WatchJob stream (stage, log, result) in its detail panel; the list's
 * rows follow the one WatchJobs stream. The panel shows where the job stands, so it asks the
 * server to coalesce progress: a tab that falls behind gets the latest, not every step. */
function watch(jobId: string): void {
  if (state.detail?.jobId === jobId) return;
  state.detail?.ctl.abort();
  const ctl = new AbortController();
  state.detail = { ctl, jobId };
  void (async () => {
    let after = 0n;
    while (!ctl.signal.aborted) {
      try {
        for await (const ev of api.jobs.watchJob({ jobId, afterSeq: after, coalesceProgress: true }, { signal: ctl.signal })) {
          if (ev.seq > after) after = ev.seq;
          const row = document.querySelector(`[data-job="${jobId}"]`);
          const detail = state.open === jobId ? document.getElementById("detail") : null;
          switch (ev.event.case) {
            case "snapshot":
              after = ev.event.value.lastEventSeq;
              setBar(row?.querySelector(".bar") ?? null, ev.event.value.progress, ev.event.value.status);
              setBar(detail?.querySelector(".bar") ?? null, ev.event.value.progress, ev.event.value.status);
              break;
            case "progress": {
              const p = ev.event.value;
              setBar(row?.querySelector(".bar") ?? null, p.percent);
              setBar(detail?.querySelector(".bar") ?? null, p.percent);
              const stage = detail?.querySelector<HTMLElement>("[data-testid=stage]");
              if (stage) {
                stage.textContent = [p.stage, p.message].filter(Boolean).join(": ");
                if (p.stage) stage.dataset.stage = p.stage;
              }
              break;
            }
            case "status": {
              const s = ev.event.value.status;
              const cell = row?.querySelector(".status");
              if (cell) cell.textContent = statusName(s);
              const done = s === JobStatus.COMPLETED;
              for (const bar of [row?.querySelector(".bar"), detail?.querySelector(".bar")]) {
                if (bar) setBar(bar, done ? 100 : Number(bar.getAttribute("aria-valuenow") ?? 0), s);
              }
              const st = detail?.querySelector("[data-testid=detail-status]");
              if (st) st.textContent = statusName(s) + (ev.event.value.error ? ` — ${ev.event.value.error}` : "");
              const line = detail?.querySelector<HTMLElement>("[data-testid=stage]");
              if (line && !ACTIVE.has(s)) line.textContent = stageLine(s, line.dataset.stage ?? "");
              break;
            }
            case "log": {
              const logs = detail?.querySelector("pre");
              if (logs) logs.textContent += `${ev.event.value.line}\n`;
              break;
            }
            case "result":
              if (detail) void renderResult(ev.event.value);
              break;
          }
        }
        break; // the stream ended: the job finished
      } catch (err) {
        if (ctl.signal.aborted) return;
        if (err instanceof ConnectError && err.code === Code.Unauthenticated) {
          // The server ends streams whose token expired or whose sign-in was revoked: refresh,
          // and resume after `after` if this sign-in still holds; otherwise stop here.
          await api.session.refresh();
          if (!api.session.user) return;
          continue;
        }
        await new Promise((r) => setTimeout(r, 1000)); // reconnect after `after`: nothing missed
      }
    }
    if (state.detail?.ctl === ctl) state.detail = null;
  })();
}

// --- API keys and webhooks --------------------------------------------------------------------

function showAccess(): void {
  state.open = "";
  state.detail?.ctl.abort();
  state.detail = null;
  document.getElementById("detail")!.replaceChildren(accessPanel(api, state.projects, notice));
}

// --- one job ---------------------------------------------------------------------------------

async function openJob(jobId: string): Promise<void> {
  state.open = jobId;
  if (state.detail && state.detail.jobId !== jobId) {
    state.detail.ctl.abort(); // one detail stream: the open job's
    state.detail = null;
  }
  const detail = document.getElementById("detail")!;
  let job: Job;
  try {
    job = (await api.jobs.getJob({ jobId })).job!;
  } catch (err) {
    notice(describe(err));
    return;
  }
  detail.replaceChildren(h("div", { class: "card", testid: "detail" },
    h("h2", {}, job.title || typeName(job.type)),
    h("p", {}, `${typeName(job.type)} · `, h("span", { testid: "detail-status" }, statusName(job.status) + (job.error ? ` — ${job.error}` : ""))),
    progressBar("detail-progress", job.progress, job.status),
    h("p", { class: "muted", testid: "stage", "data-stage": job.stage }, stageLine(job.status, job.stage)),
    h("div", { id: "result", testid: "result" }),
    h("details", {}, h("summary", {}, "Log"), h("pre", {})),
    deliveries(api, job.id),
  ));
  if (ACTIVE.has(job.status)) {
    watch(jobId);
  } else if (job.status === JobStatus.COMPLETED) {
    try {
      const result = (await api.results.getJobResult({ jobId })).result!;
      await renderResult(result);
    } catch (err) {
      notice(describe(err));
    }
  }
}

async function renderResult(result: JobResult): Promise<void> {
  const box = document.getElementById("result");
  if (!box) return;
  const logs = document.querySelector("#detail pre");
  if (logs) logs.textContent = result.logs;
  const files = await renderFiles(api, result);
  box.replaceChildren(...files, metaTable(result.meta as Record<string, unknown> | undefined) ?? "");
}

/** The line under a job's bar: its stage while it runs; where it stopped once it has. */
function stageLine(status: JobStatus, stage: string, error = ""): string {
  switch (status) {
    case JobStatus.COMPLETED:
      return "Finished.";
    case JobStatus.FAILED:
      return stage ? `Failed during: ${stage}` : "Failed before it started.";
    case JobStatus.CANCELLED:
      return stage ? `Cancelled during: ${stage}` : "Cancelled before it started.";
    default:
      return [stage, error].filter(Boolean).join(": ");
  }
}

// --- create a job ----------------------------------------------------------------------------

let voices: { id: string; label: string; available: boolean }[] = [];

/** The voice choices: those a connected worker can speak now, then the rest (greyed out). */
function voiceOptions(): HTMLElement[] {
  const now = voices.filter((v) => v.available);
  const later = voices.filter((v) => !v.available);
  const options: HTMLElement[] = [h("option", { value: "" }, "Default voice"), ...now.map((v) => h("option", { value: v.id }, v.label))];
  if (later.length) options.push(h("optgroup", { label: "No worker can speak these now" }, ...later.map((v) => h("option", { value: v.id, disabled: true }, v.label))));
  return options;
}

async function loadVoices(projectId = ""): Promise<void> {
  try {
    // Stock voices, and the project's saved (cloned) voices.
    voices = (await api.voices.listVoices({ projectId })).voices.map((v) => ({ id: v.id, label: `${v.id} (${v.engine}${v.language ? ", " + v.language : ""})`, available: v.available }));
  } catch {
    voices = [];
  }
  const select = document.querySelector<HTMLSelectElement>("select[name=voice]");
  if (select) select.replaceChildren(...voiceOptions());
}

function formatSelect(): HTMLSelectElement {
  return h("select", { name: "format" }, ...[AudioFormat.WAV, AudioFormat.FLAC, AudioFormat.MP3, AudioFormat.OGG_OPUS].map((f) => h("option", { value: String(f) }, AudioFormat[f].toLowerCase().replace("_", " "))));
}

function fieldsFor(type: JobType): HTMLElement[] {
  const file = (label: string) => h("label", {}, label, h("input", { type: "file", name: "file", accept: "audio/*,video/*", required: true, testid: "file" }));
  switch (type) {
    case JobType.TTS:
      return [
        h("label", {}, "Text", h("textarea", { name: "text", required: true, rows: "4", testid: "text" })),
        h("label", {}, "Voice", h("select", { name: "voice", testid: "voice" }, ...voiceOptions())),
        h("label", {}, "Format", formatSelect()),
      ];
    case JobType.STT:
      return [file("Recording"), h("label", {}, "Language (blank: detect)", h("input", { name: "language", placeholder: "en" })),
        h("label", {}, "Task", h("select", { name: "task" }, h("option", { value: String(SttTask.TRANSCRIBE) }, "transcribe"), h("option", { value: String(SttTask.TRANSLATE) }, "translate to English"))),
        h("label", { class: "check" }, h("input", { type: "checkbox", name: "diarize", testid: "diarize" }), "Say who speaks"),
        h("label", {}, "Speakers (blank: find out)", h("input", { name: "num_speakers", type: "number", min: "1", max: "20" }))];
    case JobType.VOICE_CLONING:
      return [file("Reference recording (3–60 s of the voice)"),
        h("label", {}, "Text to speak (or leave empty and convert a recording)", h("textarea", { name: "text", rows: "3" })),
        h("label", {}, "Recording to convert into the voice (optional)", h("input", { type: "file", name: "source", accept: "audio/*,video/*" })),
        h("label", {}, "Save as voice (optional)", h("input", { name: "save_as_voice" })),
        h("label", { class: "check" }, h("input", { type: "checkbox", name: "keep_reference" }), "Keep the reference recording with the saved voice"),
        h("label", {}, "Format", formatSelect())];
    case JobType.DUBBING:
      return [file("Recording or video"), h("label", {}, "Target language", h("input", { name: "target_language", required: true, placeholder: "pt" })),
        h("label", {}, "Speakers (blank: find out)", h("input", { name: "num_speakers", type: "number", min: "1", max: "20" })),
        h("label", { class: "check" }, h("input", { type: "checkbox", name: "keep_background", checked: true }), "Keep background"), h("label", {}, "Format", formatSelect())];
    case JobType.AI_STORIES:
      return [h("label", {}, "Prompt", h("textarea", { name: "prompt", required: true, rows: "3" })),
        h("label", {}, "Length (words)", h("input", { name: "target_words", type: "number", min: "50", max: "2000", value: "150" })),
        h("label", {}, "Writer", h("select", { name: "writer", testid: "writer" },
          h("option", { value: "" }, "Qwen 1.5B: follows the prompt"), h("option", { value: "gemma-3-270m" }, "Gemma 270M: fast, loosely on topic"))),
        h("label", {}, "Format", formatSelect())];
    default:
      return [];
  }
}

function createForm(): HTMLElement {
  const project = h("select", { name: "project", "data-projects": "one", required: true, testid: "project" });
  const type = h("select", { name: "type", testid: "type" }, ...TYPES.map(([v, n]) => h("option", { value: String(v) }, n)));
  const title = h("input", { name: "title", placeholder: "optional", testid: "title" });
  const fields = h("div", { class: "fields" }, ...fieldsFor(JobType.TTS));
  const sent = h("progress", { max: "100", value: "0", hidden: true, testid: "upload-progress" });
  const submit = h("button", { type: "submit", testid: "create" }, "Create job");
  type.addEventListener("change", () => fields.replaceChildren(...fieldsFor(Number(type.value))));
  project.addEventListener("change", () => void loadVoices(project.value)); // its saved voices too
  const form = h("form", {
    class: "card create", testid: "create-form",
    onsubmit: async (e: Event) => {
      e.preventDefault();
      submit.disabled = true;
      try {
        const job = await createJob(form, Number(type.value), project.value, title.value, sent);
        notice(`Created ${typeName(job.type)} job.`, "info");
        await refreshJobs();
        await openJob(job.id);
      } catch (err) {
        notice(describe(err));
      } finally {
        submit.disabled = false;
        sent.hidden = true;
      }
    },
  }, h("h2", {}, "New job"), h("label", {}, "Project", project), h("label", {}, "Type", type), h("label", {}, "Title", title), fields, sent, submit);
  return form;
}

async function createJob(form: HTMLFormElement, type: JobType, projectId: string, title: string, sent: HTMLProgressElement): Promise<Job> {
  const data = new FormData(form);
  const text = (name: string) => String(data.get(name) ?? "").trim();
  const format = Number(text("format") || AudioFormat.WAV) as AudioFormat;
  let inputFileId = "";
  const file = data.get("file");
  if (file instanceof File && file.size > 0) {
    sent.hidden = false;
    inputFileId = await upload(api, file, (n, total) => { sent.value = (100 * n) / total; });
  }
  const request = { projectId, title, inputFileId };
  let reply;
  switch (type) {
    case JobType.TTS:
      reply = await api.jobs.createJob({ ...request, params: { case: "tts", value: { text: text("text"), voice: text("voice"), format } } });
      break;
    case JobType.STT:
      {
        const diarize = data.get("diarize") !== null;
        reply = await api.jobs.createJob({ ...request, params: { case: "stt", value: { language: text("language"), task: Number(text("task")) as SttTask,
          diarize, numSpeakers: diarize ? Number(text("num_speakers") || 0) : 0 } } });
      }
      break;
    case JobType.VOICE_CLONING:
    {
      const source = data.get("source");
      const sourceFileId = source instanceof File && source.size > 0 ? await upload(api, source, (n, total) => { sent.value = (100 * n) / total; }) : "";
      reply = await api.jobs.createJob({ ...request, params: { case: "voiceCloning", value: {
        text: sourceFileId ? "" : text("text"), sourceFileId, saveAsVoice: text("save_as_voice"),
        keepReference: data.get("keep_reference") !== null && Boolean(text("save_as_voice")), format } } });
    }
      break;
    case JobType.DUBBING:
      reply = await api.jobs.createJob({ ...request, params: { case: "dubbing", value: { targetLanguage: text("target_language"), keepBackground: data.get("keep_background") !== null,
        numSpeakers: Number(text("num_speakers") || 0), format } } });
      break;
    case JobType.AI_STORIES:
      reply = await api.jobs.createJob({ ...request, params: { case: "aiStories", value: { prompt: text("prompt"), targetWords: Number(text("target_words") || 150), writer: text("writer"), format } } });
      break;
    default:
      throw new Error("choose a job type");
  }
  return reply.job!;
}

// --- start -----------------------------------------------------------------------------------

if (api.session.user) void showMain();
else showLogin();
