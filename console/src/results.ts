// A finished job's result as a person wants it: audio in a player, transcripts as timestamped
// text, subtitles (SRT and WebVTT) previewed, other text shown, every file downloadable, and
// the meta as a small labelled table with units.
import type { JobResult } from "./gen/voxmesh/v1/jobs_pb";
import { download, type Api } from "./api";
import { h } from "./dom";

/** Known meta keys: label and how to show the value. */
const META: Record<string, [string, (v: unknown) => string]> = {
  duration_seconds: ["Duration", (v) => seconds(Number(v))],
  processing_seconds: ["Processing time", (v) => seconds(Number(v))],
  rtf: ["Real-time factor", (v) => `${Number(v).toFixed(3)}× (lower is faster)`],
  language: ["Language", String],
  source_language: ["Source language", String],
  target_language: ["Target language", String],
  language_probability: ["Language confidence", percent],
  confidence: ["Confidence", percent],
  word_count: ["Words", String],
  characters: ["Characters", String],
  segments: ["Segments", String],
  sample_rate: ["Sample rate", (v) => `${Number(v).toLocaleString()} Hz`],
  model: ["Model", String],
  engine: ["Engine", String],
  voice: ["Voice", String],
  similarity_clone: ["Similarity to the reference", percent],
  similarity_base: ["Base voice's similarity", percent],
  speaker_similarity: ["Similarity to the reference", percent],
  base_voice_similarity: ["Base voice's similarity", percent],
  tokens_per_second: ["Writing speed", (v) => `${Number(v).toFixed(1)} tokens/s`],
  max_overflow_seconds: ["Longest overrun", (v) => seconds(Number(v))],
  parts: ["Parts decoded in parallel", String],
  saved_voice: ["Saved as voice", String],
  task: ["Task", String],
  talk_time_seconds: ["Talk time", (v) => pairs(v, (x) => seconds(Number(x)))],
  speaker_voices: ["Voice per speaker", (v) => pairs(v, String)],
  language_detected: ["Language detected", (v) => (v ? "yes" : "no, given")],
  speakers: ["Speakers", String],
  writer: ["Writer", String],
  target_words: ["Words asked for", String],
  length_note: ["Length", String],
};

function rest(k: string): string {
  const words = k.replaceAll("_", " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function seconds(v: number): string {
  if (!Number.isFinite(v)) return "–";
  if (v < 60) return `${v.toFixed(v < 10 ? 2 : 1)} s`;
  return `${Math.floor(v / 60)} min ${Math.round(v % 60)} s`;
}

/** An object's entries on one line: "SPEAKER 1: 25.9 s · SPEAKER 2: 16.5 s". */
function pairs(v: unknown, show: (x: unknown) => string): string {
  if (!v || typeof v !== "object") return String(v);
  return Object.entries(v as Record<string, unknown>).map(([k, x]) => `${k}: ${show(x)}`).join(" · ");
}

function percent(v: unknown): string {
  if (v && typeof v === "object") {  // a matrix: dubbed speaker -> {source speaker: similarity}
    return Object.entries(v as Record<string, unknown>).map(([k, row]) => `${k} → ${pairs(row, percent)}`).join("; ");
  }
  const n = Number(v);
  return Number.isFinite(n) ? `${(n <= 1 ? n * 100 : n).toFixed(1)} %` : String(v);
}

function clock(t: number): string {
  const m = Math.floor(t / 60);
  return `${String(m).padStart(2, "0")}:${(t - 60 * m).toFixed(1).padStart(4, "0")}`;
}

/** The meta as a table: known keys first with labels and units, then the rest. */
export function metaTable(meta: Record<string, unknown> | undefined): HTMLElement | null {
  if (!meta || !Object.keys(meta).length) return null;
  const known = Object.keys(META).filter((k) => k in meta);
  const others = Object.keys(meta).filter((k) => !(k in META)).sort();
  const row = (label: string, value: string) => h("tr", {}, h("th", {}, label), h("td", {}, value));
  return h("table", { class: "meta", testid: "meta" }, h("tbody", {},
    ...known.map((k) => row(META[k][0], META[k][1](meta[k]))),
    ...others.map((k) => row(rest(k), typeof meta[k] === "object" ? JSON.stringify(meta[k]) : String(meta[k]))),
  ));
}

interface Segment { start: number; end: number; text: string; speaker?: string }

/** A transcript document (transcript.json, segments.json) as timestamped lines. */
function transcript(doc: { segments?: Segment[] }): HTMLElement | null {
  const segments = doc.segments ?? [];
  if (!segments.length) return null;
  return h("ol", { class: "transcript", testid: "transcript" }, ...segments.map((s) =>
    h("li", {}, h("span", { class: "time" }, `${clock(s.start)}–${clock(s.end)}`),
      s.speaker ? h("span", { class: "speaker" }, ` ${s.speaker.replace(/_0*(\d+)$/, " $1")}`) : null, ` ${s.text.trim()}`)));
}

const TEXT = /^(text\/|application\/(x-subrip|json|x-ndjson|markdown))/;

export async function renderFiles(api: Api, result: JobResult): Promise<HTMLElement[]> {
  const items: HTMLElement[] = [];
  for (const file of result.files) {
    const item = h("div", { class: "file", testid: `file-${file.name}` },
      h("span", {}, `${file.name} (${Math.ceil(Number(file.sizeBytes) / 1024)} KiB)`),
      h("button", { testid: `download-${file.name}`, onclick: async () => {
        const { blob, name } = await download(api, file.fileId);
        const link = h("a", { href: URL.createObjectURL(blob), download: name });
        document.body.append(link);
        link.click();
        link.remove();
      } }, "Download"));
    if (file.contentType.startsWith("audio/")) {
      const { blob } = await download(api, file.fileId);
      item.append(h("audio", { controls: true, src: URL.createObjectURL(blob), testid: `audio-${file.name}` }));
    } else if (TEXT.test(file.contentType) && Number(file.sizeBytes) < 200_000) {
      const body = await (await download(api, file.fileId)).blob.text();
      let shown: HTMLElement | null = null;
      if (file.contentType === "application/json") {
        try {
          shown = transcript(JSON.parse(body));
        } catch {
          shown = null;
        }
      }
      item.append(shown ?? h("pre", { class: "text", testid: `preview-${file.name}` }, body));
    }
    items.push(item);
  }
  return items;
}
