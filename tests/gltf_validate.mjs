// Validate a .glb with the Khronos glTF validator and print its JSON report on stdout.
// Usage: node tests/gltf_validate.mjs path/to/asset.glb   (needs `npm ci` in the repository root)
// Exit status: 0 when the report was printed (read issues.numErrors from it), 2 when the file could not be validated.
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(import.meta.url);
const validator = require("gltf-validator");

const file = process.argv[2];
if (!file) {
  console.error("usage: node tests/gltf_validate.mjs ASSET.glb");
  process.exit(2);
}
try {
  const bytes = new Uint8Array(await readFile(file));
  // A .glb embeds its buffers and images; anything external is an error for our exports, so there is no loader.
  const report = await validator.validateBytes(bytes, { uri: path.basename(file), maxIssues: 100 });
  console.log(JSON.stringify(report, null, 2));
} catch (err) {
  console.error(`glTF validation of ${file} failed: ${err}`);
  process.exit(2);
}
