"""Export: meshes (marching cubes) and turntable videos."""
