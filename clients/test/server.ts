// Starts the real Indaba single-node program for a test file: fresh data dir, free port.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createWriteStream, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const bin = process.env.INDABA_BIN ?? join(repoRoot, 'target/debug/indaba');

export async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => res(port));
    });
  });
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls until `fn` returns a truthy value (or throws after `timeoutMs`). */
export async function until<T>(fn: () => T | Promise<T>, what: string, timeoutMs = 15_000): Promise<NonNullable<T>> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ''}`);
    await sleep(25);
  }
}

export class IndabaServer {
  readonly dataDir = mkdtempSync(join(tmpdir(), 'indaba-js-'));
  port = 0;
  private proc: ChildProcess | null = null;
  private exited: Promise<void> | null = null;

  constructor(private env: Record<string, string> = {}) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    if (!existsSync(bin)) throw new Error(`Indaba binary not found at ${bin} (set INDABA_BIN, or build it with cargo build -p indaba)`);
    if (!this.port) this.port = await freePort();
    const log = createWriteStream(join(this.dataDir, 'server.log'), { flags: 'a' });
    const proc = spawn(bin, ['serve'], {
      env: {
        ...process.env,
        INDABA_DATA_DIR: this.dataDir,
        INDABA_LISTEN: `127.0.0.1:${this.port}`,
        INDABA_LOG: 'warn',
        INDABA_DEV_TOKENS: '1',
        INDABA_DRAIN_SECS: '1',
        INDABA_CHAT_RATE_PER_10S: '1000',
        // The SDK tests poll REST and reconnect far faster than a person would.
        INDABA_REST_RATE_PER_10S: '0',
        INDABA_CONVERSATION_CREATE_RATE_PER_MIN: '0',
        ...this.env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    proc.stdout!.pipe(log);
    proc.stderr!.pipe(log);
    this.proc = proc;
    this.exited = new Promise((r) => proc.once('exit', () => r()));
    let dead = false;
    proc.once('exit', () => (dead = true));
    await until(async () => {
      if (dead) throw new Error(`indaba exited at start; see ${join(this.dataDir, 'server.log')}`);
      const r = await fetch(`${this.url}/readyz`);
      return r.ok;
    }, 'the server to be ready', 30_000);
  }

  /** SIGKILL (a crash) or SIGTERM (graceful drain: sockets close with 1012). */
  async stop(signal: 'SIGKILL' | 'SIGTERM' = 'SIGTERM'): Promise<void> {
    if (!this.proc) return;
    this.proc.kill(signal);
    await this.exited;
    this.proc = null;
  }

  async token(user: number, ttlSecs?: number): Promise<string> {
    const args = ['token', '--user', String(user)];
    if (ttlSecs !== undefined) args.push('--ttl-secs', String(ttlSecs));
    const { stdout } = await promisify(execFile)(bin, args, { env: { ...process.env, INDABA_DATA_DIR: this.dataDir, ...this.env } });
    return stdout.trim();
  }

  private leeway: number | undefined;

  /** A JWT signed with the server's secret that the server accepts for `validForSecs` more
   *  seconds, whatever JWT leeway it applies (measured once: the single-node program may
   *  ignore INDABA_JWT_LEEWAY_SECS and allow 30 s). */
  async mintToken(user: number, validForSecs: number): Promise<string> {
    if (this.leeway === undefined) {
      // A token expired 5 s ago is accepted only with a leeway.
      const probe = this.sign(user, Math.floor(Date.now() / 1000) - 5);
      const r = await fetch(`${this.url}/ws/chat/?token=${probe}`); // not an upgrade: 401 only for a refused token
      this.leeway = r.status === 401 ? 0 : 30;
    }
    return this.sign(user, Math.floor(Date.now() / 1000) + validForSecs - this.leeway);
  }

  private sign(user: number, exp: number): string {
    const secret = readFileSync(join(this.dataDir, 'jwt-secret'), 'utf8').trim();
    const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const head = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ user_id: user, token_type: 'access', iat: exp - 3600, exp })}`;
    return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
  }

  /** Whether an HTTP route exists in this binary (not 404 / 405 for GET). */
  async hasRoute(path: string, token?: string): Promise<boolean> {
    const ctrl = new AbortController();
    try {
      const r = await fetch(this.url + path, { headers: token ? { Authorization: `Bearer ${token}` } : {}, signal: ctrl.signal });
      return r.status !== 404;
    } finally {
      ctrl.abort();
    }
  }

  async dispose(): Promise<void> {
    await this.stop('SIGKILL');
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}
