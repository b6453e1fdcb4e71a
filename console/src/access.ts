// API keys and webhooks in the console: make a key (its secret shown once), list and revoke
// keys; name a project's webhook URLs and see the secret its deliveries are signed with; a
// job's webhook deliveries (attempts, status codes, errors). The server enforces every rule
// (a key's role at most its owner's, keys cannot make keys, SSRF); this page only asks.
import { timestampDate, timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { ApiKey } from "./gen/voxmesh/v1/keys_pb";
import type { Project } from "./gen/voxmesh/v1/projects_pb";
import { UserRole } from "./gen/voxmesh/v1/users_pb";
import { describe, type Api } from "./api";
import { h } from "./dom";

type Notice = (text: string, kind?: "error" | "info") => void;

const ROLES = [UserRole.VIEWER, UserRole.EDITOR, UserRole.ADMIN];
const roleName = (r: UserRole) => UserRole[r].toLowerCase();
const when = (ts: Timestamp | undefined, none: string) => (ts ? timestampDate(ts).toLocaleString() : none);
const DAY_MS = 86_400_000;

/** The "API keys & webhooks" card. */
export function accessPanel(api: Api, projects: Project[], notice: Notice): HTMLElement {
  const me = api.session.user!;
  const projectName = (id: string) => projects.find((p) => p.id === id)?.name ?? (id ? id.slice(0, 8) : "all projects");
  const allUsers = h("input", { type: "checkbox", testid: "keys-all-users", onchange: () => void reload() });
  const rows = h("tbody", { testid: "key-rows" });
  const secret = h("div", { class: "secret", hidden: true, testid: "key-secret-box" });

  async function reload(): Promise<void> {
    try {
      const keys = (await api.keys.listApiKeys({ includeRevoked: true, allUsers: allUsers.checked })).keys;
      rows.replaceChildren(...keys.map(row));
      if (!keys.length) rows.append(h("tr", {}, h("td", { colspan: "5", class: "muted" }, "No keys yet.")));
    } catch (err) {
      notice(describe(err));
    }
  }

  function row(key: ApiKey): HTMLElement {
    const revoked = key.revokeTime !== undefined;
    const revoke = async () => {
      if (!window.confirm(`Revoke the key "${key.name}"? Anything using it is refused from its next call.`)) return;
      try {
        await api.keys.revokeApiKey({ keyId: key.id });
        notice(`Revoked "${key.name}".`, "info");
      } catch (err) {
        notice(describe(err));
      }
      await reload();
    };
    return h("tr", { "data-key": key.id, testid: `key-${key.name}` },
      h("td", {}, h("strong", {}, key.name),
        h("div", { class: "muted" }, [roleName(key.role), projectName(key.projectId), allUsers.checked ? key.ownerUsername : ""].filter(Boolean).join(" · "))),
      h("td", {}, h("code", {}, `${key.prefix}…`)),
      h("td", {}, when(key.lastUsedTime, "never")),
      h("td", {}, key.expireTime ? timestampDate(key.expireTime).toLocaleDateString() : "no expiry"),
      h("td", {}, h("span", { testid: `key-state-${key.name}` }, revoked ? `revoked ${when(key.revokeTime, "")}` : "active"),
        !revoked && h("button", { testid: `revoke-${key.name}`, onclick: revoke }, "Revoke")),
    );
  }

  const name = h("input", { name: "name", required: true, placeholder: "ci-pipeline", testid: "key-name" });
  const role = h("select", { name: "role", testid: "key-role" },
    ...ROLES.filter((r) => r >= me.role).map((r) => h("option", { value: String(r) }, roleName(r))));
  role.value = String(Math.max(me.role, UserRole.EDITOR)); // lower is stronger: admin 1, editor 2, viewer 3
  const scope = h("select", { name: "project", testid: "key-project" },
    h("option", { value: "" }, "All my projects"), ...projects.map((p) => h("option", { value: p.id }, p.name)));
  const days = h("input", { name: "days", type: "number", min: "1", max: "3650", placeholder: "never", testid: "key-days" });
  const create = h("form", {
    class: "inline", testid: "key-form",
    onsubmit: async (e: Event) => {
      e.preventDefault();
      try {
        const reply = await api.keys.createApiKey({
          name: name.value.trim(),
          role: Number(role.value) as UserRole,
          projectId: scope.value,
          expireTime: days.value ? timestampFromDate(new Date(Date.now() + Number(days.value) * DAY_MS)) : undefined,
        });
        const code = h("code", { testid: "key-secret" }, reply.secret);
        secret.replaceChildren(
          h("strong", {}, `Key "${reply.key!.name}" — copy it now; it is not shown again.`),
          code,
          h("button", { type: "button", onclick: () => void navigator.clipboard?.writeText(reply.secret).catch(() => undefined) }, "Copy"),
          h("p", { class: "muted" }, "Send it as ", h("code", {}, "Authorization: Bearer <key>"), " on gRPC, gRPC-web and the HTTP API under /v1."),
        );
        secret.hidden = false;
        name.value = "";
        await reload();
      } catch (err) {
        notice(describe(err));
      }
    },
  }, h("label", {}, "Name", name), h("label", {}, "Role", role), h("label", {}, "Project", scope),
    h("label", {}, "Expires in (days)", days), h("button", { type: "submit", testid: "key-create" }, "Create key"));

  void reload();
  return h("div", { class: "card", testid: "access" },
    h("h2", {}, "API keys"),
    h("p", { class: "muted" }, "For services and scripts: a key acts as you, with at most your role, optionally in one project."),
    create, secret,
    me.role === UserRole.ADMIN ? h("label", { class: "check" }, allUsers, "All users' keys") : null,
    h("div", { class: "scroll" }, h("table", { class: "keys" },
      h("thead", {}, h("tr", {}, ...["Name", "Key", "Last used", "Expires", "State"].map((t) => h("th", {}, t)))),
      rows)),
    api.session.canWrite ? webhooksForm(api, projects, notice) : null,
  );
}

/** A project's webhook URLs (one per line) and the secret deliveries are signed with. */
function webhooksForm(api: Api, projects: Project[], notice: Notice): HTMLElement {
  const project = h("select", { testid: "hook-project" }, ...projects.map((p) => h("option", { value: p.id }, p.name)));
  const urls = h("textarea", { rows: "3", placeholder: "https://example.com/voxmesh-events", testid: "hook-urls" });
  const stages = h("input", { type: "checkbox", testid: "hook-stages" });
  const secret = h("code", { testid: "hook-secret" });
  const show = (p: Project | undefined) => {
    urls.value = (p?.webhooks ?? []).map((w) => w.url).join("\n");
    stages.checked = (p?.webhooks ?? []).some((w) => w.stages);
    secret.textContent = p?.webhookSecret || "(made when the first URL is saved)";
  };
  project.addEventListener("change", async () => {
    try {
      show((await api.projects.getProject({ projectId: project.value })).project);
    } catch (err) {
      notice(describe(err));
    }
  });
  show(projects[0]);
  return h("form", {
    class: "webhooks", testid: "hook-form",
    onsubmit: async (e: Event) => {
      e.preventDefault();
      const list = urls.value.split("\n").map((u) => u.trim()).filter(Boolean);
      try {
        const reply = await api.projects.updateProject({
          projectId: project.value,
          updateMask: { paths: ["webhooks"] },
          webhooks: list.map((url) => ({ url, stages: stages.checked })),
        });
        show(reply.project);
        const saved = projects.findIndex((p) => p.id === reply.project!.id);
        if (saved >= 0) projects[saved] = reply.project!;
        notice(list.length ? `Saved ${list.length} webhook URL(s).` : "Webhooks removed.", "info");
      } catch (err) {
        notice(describe(err));
      }
    },
  },
    h("h2", {}, "Webhooks"),
    h("p", { class: "muted" }, "Voxmesh POSTs a signed event (Standard Webhooks) when a job of the project ends; retried for about a day."),
    h("label", {}, "Project", project),
    h("label", {}, "URLs, one per line", urls),
    h("label", { class: "check" }, stages, "Also when a job's stage changes"),
    h("p", {}, "Signing secret: ", secret),
    h("button", { type: "submit", testid: "hook-save" }, "Save webhooks"),
  );
}

/** A job's webhook deliveries, loaded when opened. */
export function deliveries(api: Api, jobId: string): HTMLElement {
  const body = h("div", { testid: "deliveries" }, h("p", { class: "muted" }, "Loading…"));
  const box = h("details", {}, h("summary", {}, "Webhook deliveries"), body);
  box.addEventListener("toggle", async () => {
    if (!box.open) return;
    try {
      const list = (await api.webhooks.listWebhookDeliveries({ jobId })).deliveries;
      body.replaceChildren(list.length
        ? h("table", {}, h("tbody", {}, ...list.map((d) => h("tr", {},
            h("td", {}, d.eventType), h("td", {}, d.url),
            h("td", {}, d.deliveredTime ? `delivered (${d.lastStatusCode})` : d.givenUpTime ? "given up" : `retrying: ${d.lastError || "not sent yet"}`),
            h("td", {}, `${d.attempts} attempt${d.attempts === 1 ? "" : "s"}`)))))
        : h("p", { class: "muted" }, "No webhooks for this job."));
    } catch (err) {
      body.replaceChildren(h("p", { class: "error" }, describe(err)));
    }
  });
  return box;
}
