export function connect() { throw new Error("not yet"); }
