// Builds the demo into dist/: index.html, app.js (React + @indaba/client, bundled and
// minified by esbuild), app.css. Fixed names: the single-node program embeds these files.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, 'dist');
mkdirSync(dist, { recursive: true });
await build({
  entryPoints: [join(here, 'src/main.tsx')],
  outfile: join(dist, 'app.js'),
  bundle: true,
  minify: process.env.DEMO_MINIFY !== "0",
  format: 'iife',
  target: ['es2020'],
  jsx: 'automatic',
  // The SDK from its TypeScript sources: the demo build does not depend on js/dist.
  conditions: ['source'],
  define: { 'process.env.NODE_ENV': '"production"' },
  legalComments: 'none',
  logLevel: 'warning',
});
copyFileSync(join(here, 'index.html'), join(dist, 'index.html'));
copyFileSync(join(here, 'src/app.css'), join(dist, 'app.css'));
console.log('built demo: dist/index.html, dist/app.js, dist/app.css');
