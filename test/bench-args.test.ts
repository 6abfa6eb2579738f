import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { BENCH_PARTS, BENCH_USAGE, parseBenchArgs, runsPart } from '../bench/args.js';
import { TarflowError } from '../lib/errors.js';

function refused(argv: string[], pattern: RegExp) {
  try {
    parseBenchArgs(argv);
  } catch (err) {
    assert.instance(err, TarflowError);
    assert.is((err as TarflowError).code, 'ERR_TARFLOW_INVALID_ARGUMENT');
    assert.match((err as Error).message, pattern);
    assert.match((err as Error).message, /npm run bench -- --help/);
    return;
  }
  assert.unreachable(`${argv.join(' ')} was accepted`);
}

test('bench arguments: defaults leave the device to TARFLOW_DEVICE and run all parts but profile and kv-cache, targets on CUDA only', () => {
  const a = parseBenchArgs([]);
  assert.is(a.device, undefined);
  assert.is(a.only, null);
  assert.is(a.quick, false);
  assert.is(a.count, 500);
  assert.equal(['gemm', 'attention', 'loader', 'train', 'sample'].map((p) => runsPart(a, p as never, 'cpu')), [true, true, true, true, true]);
  assert.is(runsPart(a, 'kv-cache', 'cuda'), false);
  assert.is(runsPart(a, 'profile', 'cpu'), false);
  assert.is(runsPart(parseBenchArgs(['--only', 'profile']), 'profile', 'cpu'), true);
  assert.is(runsPart(a, 'targets', 'cpu'), false);
  assert.is(runsPart(a, 'targets', 'cuda'), true);
});

test('bench arguments: --only takes a comma list and runs exactly those parts', () => {
  const a = parseBenchArgs(['--only', 'gemm, targets', '--device', 'cpu', '--quick', '--workers', '0', '--precision', 'bf16']);
  assert.equal([...a.only!], ['gemm', 'targets']);
  assert.is(runsPart(a, 'gemm', 'cpu'), true);
  assert.is(runsPart(a, 'targets', 'cpu'), true);
  assert.is(runsPart(a, 'train', 'cuda'), false);
  assert.is(a.device, 'cpu');
  assert.is(a.workers, 0);
  assert.is(a.precision, 'bf16');
  assert.is(parseBenchArgs(['--only', 'kv-cache', '--count', '20']).count, 20);
  assert.ok(parseBenchArgs(['--help']).help);
  assert.match(BENCH_USAGE, /--only PARTS/);
});

test('bench arguments: typos and bad values are refused by name before any work', () => {
  refused(['--qiuck'], /Unknown option '--qiuck'/);
  refused(['train'], /Unexpected argument 'train'/);
  refused(['--only', 'gem'], /--only takes parts from gemm, .*"gem" is not one/);
  refused(['--only', ','], /--only takes parts/);
  refused(['--device', 'gpu'], /--device must be auto, cpu or cuda, got "gpu"/);
  refused(['--precision', 'fp16'], /--precision must be fp32 or bf16, got "fp16"/);
  refused(['--workers', '2.5'], /--workers must be a whole number from 0 to 64, got "2.5"/);
  refused(['--workers', '65'], /from 0 to 64/);
  refused(['--only', 'kv-cache', '--count', '0'], /--count must be a whole number from 1/);
  refused(['--count', '5'], /add --only kv-cache/);
});

test('bench arguments: --only given twice runs the parts of both lists', () => {
  assert.equal([...parseBenchArgs(['--only', 'gemm', '--only', 'attention,loader']).only!], ['gemm', 'attention', 'loader']);
  refused(['--only', 'gemm', '--only', 'atention'], /"atention" is not one/);
});

test('bench arguments: --precision and --workers are refused when --only runs no part they change', () => {
  refused(['--only', 'sample', '--precision', 'bf16'], /--precision applies to the gemm, attention, train, profile, targets parts; --only sample runs none of them/);
  refused(['--only', 'kv-cache', '--precision', 'fp32'], /--precision applies to/);
  refused(['--only', 'gemm,attention', '--workers', '2'], /--workers applies to the loader, train, profile, targets parts; --only gemm,attention runs none of them/);
  assert.is(parseBenchArgs(['--only', 'sample,train', '--precision', 'bf16']).precision, 'bf16');
  assert.is(parseBenchArgs(['--only', 'profile', '--workers', '0']).workers, 0);
  assert.is(parseBenchArgs(['--workers', '3', '--precision', 'bf16']).workers, 3, 'the default parts include both');
  assert.match(BENCH_USAGE, /--workers N +data loader threads of the loader, train, profile, targets parts/);
});

test('bench arguments: --quick draws fewer kv-cache samples unless --count says how many, and --help says so', () => {
  assert.is(parseBenchArgs(['--only', 'kv-cache']).count, 500);
  assert.is(parseBenchArgs(['--only', 'kv-cache', '--quick']).count, 100);
  assert.is(parseBenchArgs(['--only', 'kv-cache', '--quick', '--count', '20']).count, 20);
  assert.match(BENCH_USAGE, /--count N +samples for --only kv-cache \(default 500, 100 with --quick\)/);
});

test('bench arguments: --json is off unless asked for', () => {
  assert.is(parseBenchArgs([]).json, false);
  assert.is(parseBenchArgs(['--json', '--only', 'gemm']).json, true);
  assert.match(BENCH_USAGE, /--json +one JSON document on stdout/);
});

test('bench arguments: no line of --help is wider than 120 columns, and every part is still named', () => {
  for (const line of BENCH_USAGE.split('\n')) assert.ok(line.length <= 120, `${line.length} columns: ${line}`);
  for (const part of BENCH_PARTS) assert.ok(BENCH_USAGE.includes(` ${part}`), part);
});

test('bench arguments: a refusal ends in one full stop before the pointer to --help', () => {
  try {
    parseBenchArgs(['--workers', '-1']);
    assert.unreachable('accepted');
  } catch (err) {
    assert.not.match((err as Error).message, /\.\./);
    assert.match((err as Error).message, /'--workers=-XYZ'\. Run `npm run bench -- --help`/);
  }
});

test.run();
