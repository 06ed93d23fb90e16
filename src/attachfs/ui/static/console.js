// The attachfs web console: pages over the compute API, with the user's own token.
// No framework and no build step: the platform's fetch, streams and forms are enough for
// four pages, and every value shown goes through textContent (never HTML).

const API_VERSION = "compute 2.97, attachfs 1.3";
const REFRESH_MS = 10000; // also reload what is shown, should the event stream be quiet
const session = {
  get token() { return sessionStorage.getItem("attachfs.token"); },
  get who() { return JSON.parse(sessionStorage.getItem("attachfs.who") || "null"); },
  set(token, who) {
    sessionStorage.setItem("attachfs.token", token);
    sessionStorage.setItem("attachfs.who", JSON.stringify(who));
    restartEvents();
  },
  clear() {
    sessionStorage.removeItem("attachfs.token");
    sessionStorage.removeItem("attachfs.who");
    restartEvents();
  },
};
const isAdmin = () => (session.who?.roles || []).includes("admin");
const canWrite = () => (session.who?.roles || []).some((r) => r === "member" || r === "admin");

// ---- DOM ---------------------------------------------------------------------------------
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === false || value == null) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}
const main = () => document.getElementById("main");
// A redraw (an event, the periodic reload) keeps what the user is typing or choosing in a
// form, and where the focus is; after an action of theirs succeeds, the forms start afresh.
let formsDone = false;
function show(...nodes) {
  const kept = formsDone ? [] : [...main().querySelectorAll("form[aria-label] [name]")]
    .map((el) => ({ form: el.form.getAttribute("aria-label"), name: el.name, value: el.value,
                    checked: el.checked, focused: el === document.activeElement }));
  formsDone = false;
  main().replaceChildren(...nodes.filter((n) => n != null)); // a part a role does not get is null
  for (const k of kept) {
    const el = main().querySelector(`form[aria-label="${CSS.escape(k.form)}"] [name="${CSS.escape(k.name)}"]`);
    if (!el) continue;
    if (el.type === "checkbox") el.checked = k.checked;
    else if (el.tagName !== "SELECT" || [...el.options].some((o) => o.value === k.value)) el.value = k.value;
    if (k.focused) el.focus();
  }
}
function status(value) { return h("span", { class: `status status-${value}` }, value); }
function table(headers, rows, label) {
  return h("table", { "aria-label": label },
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "None"))));
}
function say(message) { document.getElementById("live").textContent = message; }
function fail(message) {
  const box = document.getElementById("error");
  box.textContent = message;
  box.hidden = !message;
}

// ---- the API -----------------------------------------------------------------------------
class ApiError extends Error {}

async function api(method, path, body, version = API_VERSION) {
  const headers = { "X-Auth-Token": session.token, "OpenStack-API-Version": version };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  if (r.status === 401) { session.clear(); location.hash = "#/login"; throw new ApiError("Please log in again"); }
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) {
    // the compute API's fault body: {"<name>": {"code": ..., "message": ...}}
    const fault = data && Object.values(data)[0];
    throw new ApiError(fault?.message || `${method} ${path}: ${r.status}`);
  }
  return data;
}

async function act(what, fn) {
  fail("");
  try { await fn(); say(what); formsDone = true; await render(); }
  catch (e) { fail(e.message); }
}

// ---- login -------------------------------------------------------------------------------
async function loginPage() {
  const { strategy } = await (await fetch("/ui/auth")).json();
  const form = strategy === "keystone"
    ? h("form", { class: "stack", onsubmit: keystoneLogin },
        h("label", {}, "User name", h("input", { name: "username", required: true, autocomplete: "username" })),
        h("label", {}, "Password", h("input", { name: "password", type: "password", required: true, autocomplete: "current-password" })),
        h("label", {}, "Project", h("input", { name: "project", required: true })),
        h("label", {}, "Domain", h("input", { name: "domain", value: "Default" })),
        h("button", { class: "primary" }, "Log in"))
    : h("form", { class: "stack", onsubmit: noauthLogin },
        h("p", { class: "muted" }, "This cloud runs without Keystone (noauth): say who you are."),
        h("label", {}, "User", h("input", { name: "user", required: true, autocomplete: "username" })),
        h("label", {}, "Project", h("input", { name: "project", required: true })),
        h("label", {}, "Role", h("select", { name: "role" },
          h("option", { value: "member" }, "member"), h("option", { value: "reader" }, "reader"),
          h("option", { value: "admin" }, "admin"))),
        h("button", { class: "primary" }, "Log in"));
  show(h("h1", {}, "Log in"), form);
  form.querySelector("input").focus();
}

function noauthLogin(event) {
  event.preventDefault();
  const f = new FormData(event.target);
  const role = f.get("role");
  const roles = role === "admin" ? ["admin", "member", "reader"] : role === "reader" ? ["reader"] : ["member", "reader"];
  const user = f.get("user"), project = f.get("project");
  session.set(`${user}:${project}:${roles.join(",")}`, { user, project, roles });
  location.hash = "#/servers";
}

async function keystoneLogin(event) {
  event.preventDefault();
  const body = Object.fromEntries(new FormData(event.target));
  const r = await fetch("/ui/login", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  const data = await r.json();
  if (!r.ok) { fail(Object.values(data)[0]?.message || "Login failed"); return; }
  fail("");
  session.set(data.token, { user: data.user, project: data.project, roles: data.roles });
  location.hash = "#/servers";
}

// ---- servers -----------------------------------------------------------------------------
async function serversPage() {
  // an admin sees every project's servers, as `openstack server list --all-projects`
  const { servers } = await api("GET", `/v2.1/servers/detail${isAdmin() ? "?all_tenants=1" : ""}`);
  const rows = servers.map((s) => h("tr", { "data-server": s.id },
    h("td", {}, h("a", { href: `#/servers/${s.id}` }, s.name)),
    h("td", {}, status(s.status)),
    isAdmin() ? h("td", {}, s.tenant_id) : null,
    isAdmin() ? h("td", {}, s["OS-EXT-SRV-ATTR:host"] || "") : null,
    h("td", {}, (s["os-extended-shares:shares_attached"] || []).map((m) =>
      h("span", { class: "attached" }, `${m.tag} `, status(m.status), " ")))));
  show(h("h1", {}, "Servers"),
    table(["Name", "Status", ...(isAdmin() ? ["Project", "Host"] : []), "Shares"], rows, "Servers"));
}

async function serverPage(id) {
  const { server } = await api("GET", `/v2.1/servers/${id}`); // first: its 404 is the one shown
  const [{ shares }, actions] = await Promise.all([
    api("GET", `/v2.1/servers/${id}/shares`), api("GET", `/v2.1/servers/${id}/os-instance-actions`)]);
  const faults = Object.fromEntries((server["os-extended-shares:shares_attached"] || []).map((m) => [m.share_id, m.fault]));
  const names = await shareNames();
  const writable = canWrite();
  const rows = shares.map((m) => h("tr", { "data-share": m.share_id },
    h("td", {}, names[m.share_id] || m.share_id), h("td", {}, m.tag), h("td", {}, status(m.status)),
    h("td", {}, m.transport || ""), h("td", {}, m.read_only ? "yes" : "no"), h("td", {}, faults[m.share_id] || ""),
    writable ? h("td", {}, h("button", { type: "button", "aria-label": `Detach ${names[m.share_id] || m.share_id}`,
      onclick: () => act(`Detaching ${m.tag}`, () => api("DELETE", `/v2.1/servers/${id}/shares/${m.share_id}`)) }, "Detach")) : null));
  const power = writable ? h("p", {},
    h("button", { type: "button", disabled: server.status !== "SHUTOFF", onclick: () => act("Starting", () => api("POST", `/v2.1/servers/${id}/action`, { "os-start": null })) }, "Start"), " ",
    h("button", { type: "button", disabled: server.status !== "ACTIVE", onclick: () => act("Stopping", () => api("POST", `/v2.1/servers/${id}/action`, { "os-stop": null })) }, "Stop")) : null;
  // the agent's failed tries at the server's own steps, retried with backoff
  const retrying = server["attachfs:attempts"] ? h("p", { class: "fault", role: "status" },
    `The agent's last ${server["attachfs:attempts"]} tries failed and are retried: ${server["attachfs:last_error"] || ""}`) : null;
  show(
    h("h1", {}, server.name, " ", status(server.status)),
    retrying,
    power,
    h("h2", {}, "Attached shares"),
    table(["Share", "Tag", "Status", "Transport", "Read-only", "Fault", ...(writable ? [""] : [])], rows, "Attached shares"),
    writable ? attachForm(id, names) : null,
    h("h2", {}, "Instance actions"),
    table(["Action", "User", "Message", "Started"], (actions.instanceActions || []).map((a) =>
      h("tr", {}, h("td", {}, a.action), h("td", {}, a.user_id), h("td", {}, a.message || ""), h("td", {}, a.start_time))), "Instance actions"),
    h("h2", {}, "Console output"),
    consoleOutput(id));
}

function attachForm(serverId, names) {
  const choices = Object.entries(names).map(([id, name]) => h("option", { value: id }, name));
  return h("form", { class: "inline", "aria-label": "Attach a share", onsubmit: (event) => {
    event.preventDefault();
    const f = new FormData(event.target);
    const share = { share_id: f.get("share_id"), read_only: f.get("read_only") === "on" };
    if (f.get("tag")) share.tag = f.get("tag");
    act(`Attaching ${names[share.share_id] || share.share_id}`, () => api("POST", `/v2.1/servers/${serverId}/shares`, { share }));
  } },
  h("label", {}, "Share", h("select", { name: "share_id", required: true }, choices)),
  h("label", {}, "Tag", h("input", { name: "tag", placeholder: "the share's id" })),
  h("label", { class: "check" }, h("input", { type: "checkbox", name: "read_only" }), "Read-only"),
  h("button", { class: "primary" }, "Attach"));
}

function consoleOutput(id) {
  const pre = h("pre", { class: "console", "aria-label": "Console output" }, "");
  const load = () => api("POST", `/v2.1/servers/${id}/action`, { "os-getConsoleOutput": { length: 40 } })
    .then((r) => { pre.textContent = r.output || "(nothing yet)"; }).catch((e) => { pre.textContent = e.message; });
  load();
  return h("div", {}, pre, h("button", { type: "button", onclick: load }, "Reload console output"));
}

// ---- shares ------------------------------------------------------------------------------
async function shareNames() {
  // every share the caller may attach: built-in, the operator's and the share service's
  const { shares } = await api("GET", "/v2.1/os-attachfs-shares");
  return Object.fromEntries(shares.map((s) => [s.id, s.name]));
}

async function sharesPage() {
  // every provider's shares (built-in, the operator's, the share service's), with where each is attached
  const { shares, unavailable } = await api("GET", "/v2.1/os-attachfs-shares");
  const rows = shares.map((s) => h("tr", { "data-share": s.id },
    h("td", {}, s.name), h("td", {}, s.provider), h("td", {}, s.protocol), h("td", {}, status(s.status)),
    h("td", {}, s.used_bytes != null ? `${formatBytes(s.used_bytes)} of ${s.size_gib} GiB` : `${s.size_gib} GiB`),
    h("td", {}, s.attached_to.map((a) => h("a", { href: `#/servers/${a.server}` }, `${a.server.slice(0, 8)} (${a.status}) `)))));
  const missing = unavailable.length ? h("p", { class: "muted" }, `Not listed: ${unavailable.join("; ")}`) : null;
  const create = canWrite() ? h("form", { class: "inline", "aria-label": "Create a share", onsubmit: (event) => {
    event.preventDefault();
    const f = new FormData(event.target);
    act(`Created share ${f.get("name")}`, () => api("PUT", `/v2.1/os-filesystem/${encodeURIComponent(f.get("name"))}`,
      { fs_entry: { size: Number(f.get("size")), scope: f.get("scope") } }));
  } },
  h("label", {}, "Name", h("input", { name: "name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]*" })),
  h("label", {}, "Size (GiB)", h("input", { name: "size", type: "number", min: 1, value: 1, required: true })),
  h("label", {}, "Scope", h("select", { name: "scope" }, h("option", { value: "instance" }, "instance"),
    h("option", { value: "project" }, "project"), isAdmin() ? h("option", { value: "global" }, "global") : null)),
  h("button", { class: "primary" }, "Create share")) : null;
  show(h("h1", {}, "Shares"), table(["Name", "Provider", "Protocol", "Status", "Used", "Attached to"], rows, "Shares"), missing, create);
}

function formatBytes(n) {
  if (n == null) return "?";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// ---- hosts (admins) ----------------------------------------------------------------------
async function hostsPage() {
  const [{ services }, { hypervisors }] = await Promise.all([
    // 2.87: the last microversion whose hypervisor bodies carry their resource figures
    api("GET", "/v2.1/os-services"), api("GET", "/v2.1/os-hypervisors/detail", undefined, "compute 2.87")]);
  const byHost = Object.fromEntries(hypervisors.map((x) => [x.hypervisor_hostname, x]));
  const rows = services.map((s) => {
    const hv = byHost[s.host] || {};
    return h("tr", { "data-host": s.host }, h("td", {}, s.host), h("td", {}, status(s.state)), h("td", {}, s.status),
      h("td", {}, hv.running_vms ?? ""), h("td", {}, hv.vcpus_used != null ? `${hv.vcpus_used} of ${hv.vcpus}` : ""),
      h("td", {}, hv.memory_mb_used != null ? `${hv.memory_mb_used} of ${hv.memory_mb} MiB` : ""));
  });
  show(h("h1", {}, "Hosts"), table(["Host", "State", "Status", "Servers", "vCPUs", "Memory"], rows, "Hosts"));
}

// ---- routing, live updates ---------------------------------------------------------------
let rendering = Promise.resolve();
function render() {
  rendering = rendering.then(draw, draw);
  return rendering;
}

async function draw() {
  const route = location.hash.replace(/^#\//, "") || "servers";
  const nav = document.getElementById("nav");
  if (!session.token && route !== "login") { location.hash = "#/login"; return; }
  nav.hidden = !session.token;
  document.getElementById("nav-hosts").hidden = !isAdmin();
  document.getElementById("whoami").textContent = session.who ? `${session.who.user} @ ${session.who.project} (${session.who.roles.join(", ")})` : "";
  try {
    const [page, id] = route.split("/");
    if (page === "login") await loginPage();
    else if (page === "servers" && id) await serverPage(id);
    else if (page === "servers") await serversPage();
    else if (page === "shares") await sharesPage();
    else if (page === "hosts") await hostsPage();
    else show(h("h1", {}, "Not found"));
  } catch (e) { fail(e.message); }
}

// The event stream, as a watch after a list: once it is on, the page is read again, so that
// nothing that changed between the page's last read and the subscription is missed. A new
// session (log in, log out) ends the stream at once and starts one with the new token.
let stream = null; // the AbortController of the stream under way
let wake = () => {}; // ends the wait between two streams
function restartEvents() { stream?.abort(); wake(); }

async function listen() {
  for (;;) {
    const token = session.token;
    if (!token) { await new Promise((r) => { wake = r; }); continue; } // until a log in
    stream = new AbortController();
    try {
      const r = await fetch("/v2.1/os-attachfs-events", { headers: { "X-Auth-Token": token, Accept: "text/event-stream" }, signal: stream.signal });
      if (!r.ok) throw new Error(String(r.status));
      if (!location.hash.startsWith("#/login")) render(); // subscribed: read what is shown again
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (data) onChange(JSON.parse(data));
        }
      }
    } catch (e) { /* reconnect below */ }
    if (session.token !== token) continue; // a new session: its stream now
    await new Promise((r) => { wake = r; setTimeout(r, 2000); });
  }
}

function onChange(change) {
  const route = location.hash;
  if (route === "#/servers" || route === "" || route === `#/servers/${change.server}` || route === "#/shares") {
    say(`${change.event_type} on server ${change.server}`);
    render();
  }
}

window.addEventListener("hashchange", () => { fail(""); render(); });
document.getElementById("logout").addEventListener("click", () => { session.clear(); location.hash = "#/login"; });
setInterval(() => { if (session.token && !location.hash.startsWith("#/login")) render(); }, REFRESH_MS);
render();
listen();
