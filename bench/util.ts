/** Median of a list of numbers (NaN for an empty list). */
export function median (values: number[]): number {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

/** Prints a Markdown table under a title. */
export function table (title: string, head: string[], rows: string[][]): void {
  const lines = [`\n${title}\n`, `| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)]
  console.log(lines.join('\n'))
}
