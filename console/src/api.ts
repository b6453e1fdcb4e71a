// The console's view of the Voxmesh API: gRPC-web through Envoy (same origin), with clients
// generated from protos/ by protoc-gen-es, and a session that keeps its access token fresh.
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { AuthService, type TokenPair } from "./gen/voxmesh/v1/auth_pb";
import { FileService } from "./gen/voxmesh/v1/files_pb";
import { JobService } from "./gen/voxmesh/v1/jobs_pb";
import { KeyService } from "./gen/voxmesh/v1/keys_pb";
import { ProjectService } from "./gen/voxmesh/v1/projects_pb";
import { JobResultService } from "./gen/voxmesh/v1/results_pb";
import { UserRole, UserService, type User } from "./gen/voxmesh/v1/users_pb";
import { VoiceService } from "./gen/voxmesh/v1/voices_pb";
import { WebhookService } from "./gen/voxmesh/v1/webhooks_pb";

const STORAGE_KEY = "voxmesh.session";
/** Refresh this long before the access token expires (or at 80% of its life if shorter). */
const REFRESH_MARGIN_MS = 60_000;

interface Stored {
  tokens: { access: string; accessExpires: number; refresh: string; refreshExpires: number };
  user: { id: string; username: string; role: UserRole; displayName: string };
}

function ms(ts: Timestamp | undefined): number {
  return ts ? timestampDate(ts).getTime() : 0;
}

/** A signed-in user: tokens, who they are, and a timer that refreshes the access token. */
export class Session extends EventTarget {
  private state: Stored | null = null;
  private timer: number | undefined;
  refreshCount = 0;

  constructor(private readonly auth: Client<typeof AuthService>) {
    super();
    const saved = sessionStorage.getItem(STORAGE_KEY);
    if (saved) {
      const parsed = JSON.parse(saved) as Stored;
      if (parsed.tokens.refreshExpires > Date.now()) {
        this.state = parsed;
        this.schedule();
      }
    }
  }

  get user(): Stored["user"] | null {
    return this.state?.user ?? null;
  }
  get accessToken(): string {
    return this.state?.tokens.access ?? "";
  }
  get accessExpires(): number {
    return this.state?.tokens.accessExpires ?? 0;
  }
  get canWrite(): boolean {
    const role = this.state?.user.role;
    return role === UserRole.ADMIN || role === UserRole.EDITOR;
  }

  async login(username: string, password: string): Promise<void> {
    const reply = await this.auth.login({ username, password });
    this.store(reply.tokens!, reply.user!);
  }

  private refreshing: Promise<void> | null = null;

  /** Trade the refresh token for a new pair (the old refresh token stops working). One at a
   * time: concurrent callers (several streams ended together) share the same refresh, since
   * using a rotated refresh token twice would end the whole sign-in. */
  refresh(): Promise<void> {
    if (!this.refreshing) {
      this.refreshing = this.refreshOnce().finally(() => {
        this.refreshing = null;
      });
    }
    return this.refreshing;
  }

  private async refreshOnce(): Promise<void> {
    if (!this.state) return;
    try {
      const reply = await this.auth.refreshToken({ refreshToken: this.state.tokens.refresh });
      this.refreshCount += 1;
      this.store(reply.tokens!, null);
      this.dispatchEvent(new Event("refreshed"));
    } catch (err) {
      this.clear();
      this.dispatchEvent(new CustomEvent("expired", { detail: describe(err) }));
    }
  }

  /** Revoke the refresh token on the server, then forget everything here. */
  async logout(): Promise<void> {
    const refresh = this.state?.tokens.refresh;
    this.clear();
    if (refresh) {
      try {
        await this.auth.logout({ refreshToken: refresh });
      } catch {
        // Signed out here either way; the token expires on its own.
      }
    }
  }

  private store(tokens: TokenPair, user: User | null): void {
    const previous = this.state?.user;
    this.state = {
      tokens: {
        access: tokens.accessToken,
        accessExpires: ms(tokens.accessExpiresAt),
        refresh: tokens.refreshToken,
        refreshExpires: ms(tokens.refreshExpiresAt),
      },
      user: user
        ? {
            id: user.id,
            username: user.username,
            role: user.profile?.role ?? UserRole.VIEWER,
            displayName: user.profile?.displayName || user.username,
          }
        : previous!,
    };
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(this.state));
    this.schedule();
  }

  private schedule(): void {
    window.clearTimeout(this.timer);
    if (!this.state) return;
    const life = this.state.tokens.accessExpires - Date.now();
    const wait = Math.max(1_000, life > 2 * REFRESH_MARGIN_MS ? life - REFRESH_MARGIN_MS : life * 0.8);
    this.timer = window.setTimeout(() => void this.refresh(), wait);
  }

  private clear(): void {
    window.clearTimeout(this.timer);
    this.state = null;
    sessionStorage.removeItem(STORAGE_KEY);
  }
}

/** The text a person should see for an error from the API. */
export function describe(err: unknown): string {
  if (err instanceof ConnectError) {
    const code = Code[err.code] ?? String(err.code);
    return `${err.rawMessage || "request failed"} (${code})`;
  }
  return err instanceof Error ? err.message : String(err);
}

export function createApi(baseUrl: string) {
  let session: Session;
  const bearer: Interceptor = (next) => async (req) => {
    const token = session?.accessToken;
    if (token) req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
  const transport = createGrpcWebTransport({ baseUrl, interceptors: [bearer] });
  const auth = createClient(AuthService, transport);
  session = new Session(auth);
  return {
    session,
    auth,
    users: createClient(UserService, transport),
    projects: createClient(ProjectService, transport),
    jobs: createClient(JobService, transport),
    results: createClient(JobResultService, transport),
    files: createClient(FileService, transport),
    voices: createClient(VoiceService, transport),
    keys: createClient(KeyService, transport),
    webhooks: createClient(WebhookService, transport),
  };
}

export type Api = ReturnType<typeof createApi>;

async function sha256Hex(data: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", data as BufferSource);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** The resumable chunked upload (StartUpload → UploadChunk… → FinishUpload); returns the file id. */
export async function upload(
  api: Api,
  file: File,
  onProgress: (sent: number, total: number) => void,
): Promise<string> {
  const data = new Uint8Array(await file.arrayBuffer());
  const started = await api.files.startUpload({
    filename: file.name,
    contentType: file.type,
    sizeBytes: BigInt(data.length),
  });
  let offset = 0;
  while (offset < data.length) {
    const chunk = data.subarray(offset, offset + started.chunkSizeBytes);
    try {
      const reply = await api.files.uploadChunk({
        uploadId: started.uploadId,
        offset: BigInt(offset),
        data: chunk,
      });
      offset = Number(reply.receivedBytes);
    } catch (err) {
      // Resume from what the server has (a dropped connection, a repeated chunk).
      const state = await api.files.getUpload({ uploadId: started.uploadId });
      if (Number(state.receivedBytes) === offset) throw err;
      offset = Number(state.receivedBytes);
    }
    onProgress(offset, data.length);
  }
  const finished = await api.files.finishUpload({
    uploadId: started.uploadId,
    sha256: await sha256Hex(data),
  });
  return finished.file!.id;
}

/** A stored file (input or result) as a Blob, from the DownloadFile stream. */
export async function download(api: Api, fileId: string): Promise<{ blob: Blob; name: string }> {
  const parts: Uint8Array[] = [];
  let type = "application/octet-stream";
  let name = "download";
  for await (const part of api.files.downloadFile({ fileId })) {
    if (part.part.case === "file") {
      type = part.part.value.contentType || type;
      name = part.part.value.filename || name;
    } else if (part.part.case === "data") {
      parts.push(part.part.value);
    }
  }
  return { blob: new Blob(parts as BlobPart[], { type }), name };
}
