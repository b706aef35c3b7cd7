// A second entry point: makes `shared` a chunk of its own, imported by both entries.
import { heading, VERSION } from "./shared";

document.getElementById("outlet")?.replaceChildren(heading(`Admin (${VERSION})`));
