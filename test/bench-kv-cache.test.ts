import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { kvCacheAccuracy } from '../bench/kv-cache.js';

test('kv-cache rows: each variant\'s kNN accuracy and its distance from the fp32 reference, the table printed from them', async () => {
  const log: string[] = [];
  const { rows, text } = await kvCacheAccuracy('cpu', 4, (line) => log.push(line));
  assert.is(rows.length, 8, 'two settings, four variants');
  assert.is(log.length, 8);
  for (const r of rows) {
    assert.is(r.part, 'kv-cache');
    assert.is(r.images, 4);
    assert.ok(r.value >= 0 && r.value <= 100, `${r.name}: ${r.value}`);
    const reference = r.name.endsWith('fp32 (reference)');
    assert.is(r.pixels_differ_percent === undefined, reference, `${r.name}: a difference only against the reference`);
    const cells = reference ? '- | - | -' : `${r.pixels_differ_percent!.toFixed(2)}% | ${r.mean_abs_diff!.toFixed(3)} | ${r.max_abs_diff}`;
    const [setting, variant] = r.name.split(': ');
    assert.ok(text.includes(`| ${setting} | ${variant} | ${cells} | ${r.value.toFixed(1)}% |`), `${r.name}'s table line`);
  }
  assert.ok(rows.some((r) => r.max_abs_diff! > 0), 'bf16 moves some pixel');
});

test.run();
