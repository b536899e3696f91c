#!/usr/bin/env node
// sdk_check.mjs - an independent S3 client (the AWS SDK for JavaScript v3,
// pinned in tests/package.json) that proves other tools read what s4kv wrote
// (and, with --upload, that s4kv reads what another client wrote).
//
//   node tests/sdk_check.mjs --bucket B [--prefix P] [--endpoint URL] MODE
//   MODE: --out DIR       download every object under s3://B/P into DIR
//         --compare DIR   compare every object under s3://B/P byte for byte
//                         with the files under DIR (both directions: an object
//                         without a file and a file without an object both count)
//         --upload DIR    upload every file under DIR to s3://B/P
//   --page-size N   ListObjectsV2 MaxKeys (default 1000; small values exercise
//                   pagination)
//
// An object's path relative to DIR is its key with the prefix taken off (and a
// leading "/" after it, so "db" and "db/" behave the same). Path-style
// addressing, region $AWS_REGION or us-east-1, credentials from the
// environment (AWS_ACCESS_KEY_ID, ...), endpoint from --endpoint or
// $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL. Checksums are only sent or checked
// when an operation requires them (s3rver does not know the newer flexible
// checksums), so the bytes compared are exactly the object's bytes.
//
// Prints counts; exits 0 when everything matched, 1 on any difference, 2 on
// bad usage, 3 on an S3 or file error.
import {
  S3Client,
  ListObjectsV2Command,
  GetObjectCommand,
  PutObjectCommand,
} from "@aws-sdk/client-s3";
import { mkdir, readFile, readdir, writeFile } from "node:fs/promises";
import path from "node:path";

function usage(msg) {
  if (msg) console.error(`sdk_check: ${msg}`);
  console.error(
    "usage: node sdk_check.mjs --bucket B [--prefix P] [--endpoint URL] " +
      "[--page-size N] (--out DIR | --compare DIR | --upload DIR)",
  );
  process.exit(2);
}

function parseArgs(argv) {
  const o = { prefix: "", pageSize: 1000 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--endpoint") o.endpoint = val();
    else if (a === "--bucket") o.bucket = val();
    else if (a === "--prefix") o.prefix = val();
    else if (a === "--out") o.out = val();
    else if (a === "--compare") o.compare = val();
    else if (a === "--upload") o.upload = val();
    else if (a === "--page-size") o.pageSize = Number(val());
    else if (a === "--help" || a === "-h") usage();
    else usage(`unknown argument ${a}`);
  }
  if (!o.bucket) usage("--bucket is required");
  const modes = [o.out, o.compare, o.upload].filter((m) => m !== undefined);
  if (modes.length !== 1) usage("give exactly one of --out, --compare, --upload");
  if (!Number.isInteger(o.pageSize) || o.pageSize < 1 || o.pageSize > 1000)
    usage("--page-size must be 1..1000");
  o.endpoint ??= process.env.AWS_ENDPOINT_URL_S3 || process.env.AWS_ENDPOINT_URL;
  return o;
}

function relName(key, prefix) {
  let r = key.startsWith(prefix) ? key.slice(prefix.length) : key;
  if (r.startsWith("/")) r = r.slice(1);
  return r;
}

function keyFor(rel, prefix) {
  if (!prefix) return rel;
  return prefix.endsWith("/") ? prefix + rel : `${prefix}/${rel}`;
}

// A relative path that stays inside its directory, or null.
function safeRel(rel) {
  if (!rel || rel.endsWith("/")) return null;
  const norm = path.posix.normalize(rel);
  if (norm !== rel || norm.startsWith("../") || norm === ".." || path.posix.isAbsolute(norm))
    return null;
  return norm;
}

async function listAll(s3, bucket, prefix, pageSize) {
  const objects = [];
  let token;
  let pages = 0;
  do {
    const r = await s3.send(
      new ListObjectsV2Command({
        Bucket: bucket,
        Prefix: prefix || undefined,
        MaxKeys: pageSize,
        ContinuationToken: token,
      }),
    );
    pages++;
    for (const c of r.Contents ?? []) objects.push({ key: c.Key, size: Number(c.Size) });
    token = r.IsTruncated ? r.NextContinuationToken : undefined;
    if (r.IsTruncated && !token) throw new Error("ListObjectsV2: truncated without a token");
  } while (token);
  return { objects, pages };
}

async function getBytes(s3, bucket, key) {
  const r = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  const body = Buffer.from(await r.Body.transformToByteArray());
  if (r.ContentLength !== undefined && Number(r.ContentLength) !== body.length)
    throw new Error(`GetObject ${key}: Content-Length ${r.ContentLength}, got ${body.length} bytes`);
  return body;
}

async function walk(dir, base = dir, out = []) {
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) await walk(p, base, out);
    else if (e.isFile()) out.push(path.relative(base, p).split(path.sep).join("/"));
  }
  return out;
}

// Runs fn over items with at most n in flight.
async function pool(items, n, fn) {
  let next = 0;
  const workers = Array.from({ length: Math.min(n, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      await fn(items[i], i);
    }
  });
  await Promise.all(workers);
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  // The pinned SDK runs on Node 20 (Debian's); its notice that later SDK
  // releases need Node 22 is noise in test output.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= "true";
  const s3 = new S3Client({
    region: process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION || "us-east-1",
    endpoint: o.endpoint,
    forcePathStyle: true,
    requestChecksumCalculation: "WHEN_REQUIRED",
    responseChecksumValidation: "WHEN_REQUIRED",
    maxAttempts: 3,
  });
  const where = `s3://${o.bucket}/${o.prefix}${o.endpoint ? ` at ${o.endpoint}` : ""}`;

  if (o.upload !== undefined) {
    const files = (await walk(o.upload)).sort();
    let bytes = 0;
    await pool(files, 8, async (rel) => {
      const body = await readFile(path.join(o.upload, rel));
      bytes += body.length;
      await s3.send(
        new PutObjectCommand({ Bucket: o.bucket, Key: keyFor(rel, o.prefix), Body: body }),
      );
    });
    console.log(`sdk_check: uploaded ${files.length} objects, ${bytes} bytes to ${where}`);
    return 0;
  }

  const { objects, pages } = await listAll(s3, o.bucket, o.prefix, o.pageSize);
  let bytes = 0;
  let problems = 0;
  const report = (msg) => {
    problems++;
    if (problems <= 50) console.error(`sdk_check: ${msg}`);
  };

  if (o.out !== undefined) {
    await mkdir(o.out, { recursive: true });
    await pool(objects, 8, async (obj) => {
      const rel = safeRel(relName(obj.key, o.prefix));
      if (!rel) return report(`${obj.key}: key does not map to a file name, not written`);
      const body = await getBytes(s3, o.bucket, obj.key);
      if (body.length !== obj.size)
        report(`${obj.key}: listed size ${obj.size}, downloaded ${body.length} bytes`);
      bytes += body.length;
      const dest = path.join(o.out, ...rel.split("/"));
      await mkdir(path.dirname(dest), { recursive: true });
      await writeFile(dest, body);
    });
    console.log(
      `sdk_check: downloaded ${objects.length} objects, ${bytes} bytes from ${where} ` +
        `(${pages} list pages) into ${o.out}; ${problems} problems`,
    );
    return problems ? 1 : 0;
  }

  // --compare
  const local = new Set(await walk(o.compare));
  let identical = 0;
  let differ = 0;
  let missingLocal = 0;
  await pool(objects, 8, async (obj) => {
    const rel = safeRel(relName(obj.key, o.prefix));
    if (!rel) return report(`${obj.key}: key does not map to a file name`);
    const body = await getBytes(s3, o.bucket, obj.key);
    bytes += body.length;
    if (!local.has(rel)) {
      missingLocal++;
      return report(`${obj.key}: no file ${rel} in ${o.compare}`);
    }
    local.delete(rel);
    const want = await readFile(path.join(o.compare, ...rel.split("/")));
    if (Buffer.compare(want, body) === 0) {
      identical++;
      return;
    }
    differ++;
    let at = 0;
    while (at < want.length && at < body.length && want[at] === body[at]) at++;
    report(`${obj.key}: differs from ${rel} at byte ${at} (object ${body.length} bytes, file ${want.length})`);
  });
  for (const rel of [...local].sort()) report(`${rel}: file has no object ${keyFor(rel, o.prefix)}`);
  console.log(
    `sdk_check: ${objects.length} objects (${bytes} bytes, ${pages} list pages) in ${where}; ` +
      `${identical} identical, ${differ} differ, ${missingLocal} missing locally, ` +
      `${local.size} missing remotely`,
  );
  return problems ? 1 : 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    const status = err?.$metadata?.httpStatusCode;
    console.error(
      `sdk_check: ${err?.name ?? "Error"}: ${err?.message ?? err}` +
        (status ? ` (HTTP ${status})` : ""),
    );
    process.exit(3);
  },
);
