// Builds dist/esm (ES modules) and dist/cjs (CommonJS), each with .d.ts, using tsc only.
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
rmSync(join(here, 'dist'), { recursive: true, force: true });
for (const cfg of ['tsconfig.json', 'tsconfig.cjs.json']) {
  execFileSync(process.execPath, [tsc, '-p', join(here, cfg)], { stdio: 'inherit' });
}
mkdirSync(join(here, 'dist/cjs'), { recursive: true });
writeFileSync(join(here, 'dist/cjs/package.json'), '{ "type": "commonjs" }\n');
writeFileSync(join(here, 'dist/esm/package.json'), '{ "type": "module" }\n');
console.log('built @indaba/client: dist/esm, dist/cjs');
