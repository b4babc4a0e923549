// The demo viewer (app/http/viewer.py): a patient's ImagingStudy search, then rendered thumbnails through WADO-RS.
// Everything from a server reaches the DOM through textContent or a blob: URL, never as HTML.
"use strict";

const FHIR = document.body.dataset.fhir;
const NOT_IMAGES = new Set(["KO", "SR", "PR", "DOC", "SEG", "RWV", "REG", "PLAN", "RTPLAN", "RTSTRUCT"]);
const MAX_PAGES = 500;
let token = "";

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function headers(accept, withToken = true) {
  const h = {"Accept": accept};
  if (token && withToken) h["Authorization"] = "Bearer " + token;
  return h;
}

// A failed answer's OperationOutcome, as one line a person can read (R4 operationoutcome.html).
async function failure(response) {
  let text = response.statusText || "request failed";
  try {
    const body = await response.json();
    const issue = body && body.resourceType === "OperationOutcome" && (body.issue || [])[0];
    if (issue) text = issue.diagnostics || (issue.details && issue.details.text) || issue.code || text;
  } catch (e) { /* not JSON: the status line says enough */ }
  const retry = response.headers.get("Retry-After");
  return new Error("HTTP " + response.status + ": " + text + (retry ? " (try again in " + retry + " s)" : ""));
}

async function getJSON(url) {
  const response = await fetch(url, {headers: headers("application/fhir+json")});
  if (!response.ok) throw await failure(response);
  return response.json();
}

// Every page of the search: a study missing because a next link was not followed is the worst answer a viewer
// can give (FHIR search.html#paging).
async function searchStudies(patient, count) {
  const studies = [];
  const endpoints = new Map();
  const key = patient.includes("|") ? "patient.identifier" : "patient";
  let url = FHIR + "/ImagingStudy?" + key + "=" + encodeURIComponent(patient) +
    "&_include=ImagingStudy:endpoint&_count=" + encodeURIComponent(count);
  let pages = 0;
  while (url && pages < MAX_PAGES) {
    const bundle = await getJSON(url);
    pages += 1;
    for (const entry of bundle.entry || []) {
      const r = entry.resource || {};
      if (r.resourceType === "ImagingStudy") studies.push(r);
      else if (r.resourceType === "Endpoint") endpoints.set("Endpoint/" + r.id, r);
    }
    const next = (bundle.link || []).find((l) => l.relation === "next");
    url = next ? next.url : null;
  }
  return {studies, endpoints, pages};
}

function studyUid(study) {
  const id = (study.identifier || []).find((i) => i.system === "urn:dicom:uid");
  return id ? id.value.replace(/^urn:oid:/, "") : study.id;
}

// SMART Imaging Access (Argonaut, SmartWadoEndpoint): "a token is only ever sent to endpoints marked true"; false
// means the address is a capability URL, followed without the token (or a PACS that must never see it).
const REQUIRES_ACCESS_TOKEN = "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token";

// Whether the token goes to this Endpoint: as its extension says; without one (not a SMART Imaging server) only to
// the origin that already has it, the FHIR server's own.
function wantsToken(endpoint) {
  const flag = (endpoint.extension || []).find((x) => x.url === REQUIRES_ACCESS_TOKEN);
  if (flag) return flag.valueBoolean === true;
  try {
    return new URL(endpoint.address).origin === new URL(FHIR).origin;
  } catch (e) {
    return false;
  }
}

// The study's WADO-RS Endpoint: its contained one (a capability address) or the shared one it references.
function wadoEndpoint(study, endpoints) {
  const ref = ((study.endpoint || [])[0] || {}).reference || "";
  const endpoint = ref.startsWith("#") ? (study.contained || []).find((c) => "#" + c.id === ref) : endpoints.get(ref);
  return endpoint && endpoint.address ? {address: endpoint.address, withToken: wantsToken(endpoint)} : null;
}

function code(coding) {
  return coding ? (coding.code || (coding.coding && coding.coding[0] && coding.coding[0].code) || "") : "";
}

async function thumbnail(figure, url, withToken) {
  const img = el("img", null, {alt: "rendered image"});
  figure.prepend(img);
  const response = await fetch(url, {headers: headers("image/jpeg", withToken)});
  if (!response.ok) throw await failure(response);
  const blob = await response.blob();
  img.addEventListener("load", () => { img.dataset.loaded = String(img.naturalWidth); URL.revokeObjectURL(img.src); });
  img.addEventListener("error", () => { img.dataset.loaded = "0"; });
  img.src = URL.createObjectURL(blob);
}

async function showImages(study, endpoints) {
  const images = document.getElementById("images");
  images.replaceChildren();
  const uid = studyUid(study);
  images.dataset.study = uid;
  images.append(el("h2", (study.description || "Study") + " — " + (study.started || "").slice(0, 10)));
  const wado = wadoEndpoint(study, endpoints);
  if (!wado) {
    images.append(el("p", "This study has no WADO-RS endpoint."));
    return;
  }
  const work = [];
  for (const series of study.series || []) {
    const modality = code(series.modality);
    const n = series.numberOfInstances || (series.instance || []).length;
    const figure = el("figure", null, {"data-series": series.uid, "data-modality": modality});
    const caption = el("figcaption", [modality, series.number, series.description, "(" + n + ")"]
      .filter((x) => x !== undefined && x !== null && x !== "").join(" "));
    figure.append(caption);
    images.append(figure);
    const first = (series.instance || [])[0];
    if (NOT_IMAGES.has(modality) || !first) continue;
    const url = wado.address + "/studies/" + encodeURIComponent(uid) + "/series/" + encodeURIComponent(series.uid) +
      "/instances/" + encodeURIComponent(first.uid) + "/rendered";
    work.push(thumbnail(figure, url, wado.withToken).catch((e) => {
      figure.dataset.error = e.message;
      caption.textContent += " — " + e.message;
    }));
  }
  await Promise.all(work);
  images.dataset.done = "1";
}

function listStudies(found) {
  const table = document.getElementById("studies");
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const study of found.studies) {
    const row = el("tr", null, {"data-study": studyUid(study)});
    const modalities = (study.modality || []).map(code).join(", ");
    for (const text of [(study.started || "").slice(0, 10), modalities, study.description || "",
                        study.numberOfSeries ?? "", study.numberOfInstances ?? ""]) {
      row.append(el("td", text));
    }
    const button = el("button", "Images", {type: "button"});
    button.addEventListener("click", () => run(() => showImages(study, found.endpoints)));
    const cell = el("td");
    cell.append(button);
    row.append(cell);
    body.append(row);
  }
  table.hidden = found.studies.length === 0;
}

async function run(work) {
  const error = document.getElementById("error");
  error.textContent = "";
  try {
    await work();
  } catch (e) {
    error.textContent = e.message;
  } finally {
    document.body.dataset.idle = "1";
  }
}

async function find(open) {
  const patient = document.getElementById("patient").value.trim();
  const count = document.getElementById("count").value || "20";
  token = document.getElementById("token").value.trim();
  const status = document.getElementById("status");
  status.textContent = "Searching…";
  // The address bar keeps the search, never the token.
  history.replaceState(null, "", "?" + new URLSearchParams({patient, count}).toString());
  try {
    const found = await searchStudies(patient, count);
    status.textContent = found.studies.length + " studies (" + found.pages + " pages)";
    status.dataset.studies = String(found.studies.length);
    status.dataset.pages = String(found.pages);
    listStudies(found);
    const chosen = open === "first" ? found.studies[0] : found.studies.find((s) => studyUid(s) === open);
    if (chosen) await showImages(chosen, found.endpoints);
  } catch (e) {
    status.textContent = "";
    throw e;
  }
}

function start() {
  const params = new URLSearchParams(location.search);
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("access_token")) {
    document.getElementById("token").value = fragment.get("access_token");
    history.replaceState(null, "", location.pathname + location.search);  // out of the address bar and history
  }
  if (params.get("count")) document.getElementById("count").value = params.get("count");
  document.getElementById("search").addEventListener("submit", (event) => {
    event.preventDefault();
    run(() => find(null));
  });
  if (params.get("patient")) {
    document.getElementById("patient").value = params.get("patient");
    run(() => find(params.get("open")));
  } else {
    document.body.dataset.idle = "1";
  }
}

start();
