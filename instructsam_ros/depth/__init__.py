"""3-D instances from an aligned depth image: pairing by stamp (`pairing`), the geometry without
ROS (`geometry`), depth messages in and Instance3D / PointCloud2 out (`conversions`), and one
camera's depth input with its per-frame 3-D step (`step`), the one call the node makes."""
